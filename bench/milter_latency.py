#!/usr/bin/env python3
"""Latency per message through content filters: one session (an otherwise idle server),
N messages one after another, each timed from sending MAIL to the end of the final
reply to the dot (MAIL, RCPT, DATA, message and dot, each waiting for its reply).

    milter_latency.py HOST PORT N [--size BYTES] [--append FILE] [--first FILE]

The message has From: <s@example.org> (opendkim signs it) and a body of about BYTES
(4096 by default, lines like smtp-source's). The first message of the session is the
one that connects the filters (Portcullis connects them at a session's first MAIL):
with --first its time goes to that file instead of the pool. Prints
"n=N p50=.. p90=.. p99=.. max=.. us first=.. us"."""
import socket, sys, time
from email.utils import formatdate

args = sys.argv[1:]


def option(name):
    if name in args:
        i = args.index(name)
        value = args[i + 1]
        del args[i : i + 2]
        return value
    return None


append, first_file = option("--append"), option("--first")
size = int(option("--size") or 4096)
host, port, n = args[0], int(args[1]), int(args[2])

body = b"".join(b"%dX%s\r\n" % (i, b"X" * 76) for i in range(1, size // 80 + 1))


def message(i):
    head = (
        f"From: <s@example.org>\r\nTo: <u@example.com>\r\nDate: {formatdate()}\r\n"
        f"Subject: latency {i}\r\nMessage-ID: <lat.{time.time_ns()}.{i}@example.org>\r\n\r\n"
    ).encode()
    return head + body + b".\r\n"


class Session:
    def __init__(self):
        self.s = socket.create_connection((host, port), timeout=60)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def reply(self):
        """Reads one whole reply; returns its last line."""
        while True:
            while b"\r\n" in self.buf:
                line, self.buf = self.buf.split(b"\r\n", 1)
                if line[3:4] != b"-":
                    return line.decode(errors="replace")
            chunk = self.s.recv(65536)
            if not chunk:
                raise RuntimeError(f"connection closed after {self.buf!r}")
            self.buf += chunk

    def cmd(self, line, want):
        self.s.sendall(line)
        r = self.reply()
        if not r.startswith(want):
            raise RuntimeError(f"{line!r}: {r}")
        return r


c = Session()
c.reply()
c.cmd(b"EHLO latency.example.org\r\n", "250")
took = []
for i in range(n):
    data = message(i)
    start = time.perf_counter()
    c.cmd(b"MAIL FROM:<s@example.org>\r\n", "250")
    c.cmd(b"RCPT TO:<u@example.com>\r\n", "250")
    c.cmd(b"DATA\r\n", "354")
    c.cmd(data, "250")
    took.append(time.perf_counter() - start)
c.cmd(b"QUIT\r\n", "221")

first = took.pop(0) if first_file else took[0]
if append:
    with open(append, "a") as f:
        f.writelines(f"{t * 1e6:.1f}\n" for t in took)
if first_file:
    with open(first_file, "a") as f:
        f.write(f"{first * 1e6:.1f}\n")
took.sort()
us = lambda q: took[min(len(took) - 1, int(q * len(took)))] * 1e6
print(
    f"n={len(took)} p50={us(0.50):.0f} p90={us(0.90):.0f} p99={us(0.99):.0f} max={took[-1] * 1e6:.0f} us"
    f" first={first * 1e6:.0f} us"
)
