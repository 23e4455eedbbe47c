#!/usr/bin/env python3
"""Latency per message through several SMTP servers, measured in turns.

    message_latency.py N SIZE NAME=HOST:PORT [NAME=HOST:PORT ...]

session mode (always): one session per server (connect, greeting, EHLO once), then N
messages one after another in it: MAIL, RCPT, DATA, body and dot, each command sent
after the previous reply (no pipelining); a message is timed from sending MAIL to the
end of the reply to the dot. The servers take turns message by message, so drift on
the machine hits all alike. The first message of each session is reported apart (a
proxy may open its backend connection there) and left out of the percentiles.

connection mode (also): N connections per server, one at a time, taking turns: each
timed from connect() to the reply to QUIT after one message (greeting, EHLO, MAIL,
RCPT, DATA, body, QUIT).

Prints one line per server:
  NAME session_p50 session_p99 first_message conn_p50 conn_p99   (microseconds)
"""
import socket, sys, time

n, size = int(sys.argv[1]), int(sys.argv[2])
servers = []
for arg in sys.argv[3:]:
    name, addr = arg.split("=", 1)
    host, port = addr.rsplit(":", 1)
    servers.append((name, host, int(port)))

line = b"x" * 70 + b"\r\n"
body = b"Subject: latency\r\n\r\n" + line * max(1, (size - 20) // len(line)) + b".\r\n"


class Conn:
    def __init__(self, host, port):
        self.s = socket.create_connection((host, port))
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def reply(self, want):
        while True:
            # A complete reply: its last line has a space after the code.
            end = self.buf.find(b"\r\n")
            while end >= 0:
                ln = self.buf[:end]
                self.buf = self.buf[end + 2 :]
                if len(ln) < 4 or ln[3:4] == b" ":
                    if not ln.startswith(want):
                        raise RuntimeError(f"expected {want!r}, got {ln!r}")
                    return
                end = self.buf.find(b"\r\n")
            chunk = self.s.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed")
            self.buf += chunk

    def cmd(self, data, want):
        self.s.sendall(data)
        self.reply(want)

    def greet(self):
        self.reply(b"220")
        self.cmd(b"EHLO latency.test\r\n", b"250")

    def message(self):
        self.cmd(b"MAIL FROM:<a@example.org>\r\n", b"250")
        self.cmd(b"RCPT TO:<b@example.com>\r\n", b"250")
        self.cmd(b"DATA\r\n", b"354")
        self.cmd(body, b"250")

    def quit(self):
        self.cmd(b"QUIT\r\n", b"221")
        self.s.close()


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(q * len(v)))]


session = {name: [] for name, _, _ in servers}
conns = {}
for name, host, port in servers:
    c = Conn(host, port)
    c.greet()
    conns[name] = c
for i in range(n + 1):
    for name, _, _ in servers:
        t = time.perf_counter()
        conns[name].message()
        session[name].append((time.perf_counter() - t) * 1e6)
for c in conns.values():
    c.quit()

per_conn = {name: [] for name, _, _ in servers}
for i in range(n):
    for name, host, port in servers:
        t = time.perf_counter()
        c = Conn(host, port)
        c.greet()
        c.message()
        c.quit()
        per_conn[name].append((time.perf_counter() - t) * 1e6)

for name, _, _ in servers:
    first, rest = session[name][0], session[name][1:]
    print(name, f"{pct(rest, 0.5):.0f}", f"{pct(rest, 0.99):.0f}", f"{first:.0f}",
          f"{pct(per_conn[name], 0.5):.0f}", f"{pct(per_conn[name], 0.99):.0f}")
