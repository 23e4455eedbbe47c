#!/usr/bin/env python3
"""Latency to the greeting: N connections one after another (an otherwise idle
server), each timed from connect() to the end of the final "220 " line, then QUIT.

    greeting_latency.py HOST PORT N [FIRST_SOURCE] [--append FILE]

Without FIRST_SOURCE every connection comes from 127.0.0.1 (the same client again:
whatever the server caches about it is warm). With FIRST_SOURCE, e.g. 127.0.1.1, each
connection binds the next distinct loopback address (127.0.1.1 .. 127.0.1.254,
127.0.2.1, ...): every connection is a first contact. Prints
"n=N p50=.. p90=.. p99=.. max=.. us"."""
import ipaddress, socket, sys, time

args = sys.argv[1:]
append = None
if "--append" in args:
    i = args.index("--append")
    append = args[i + 1]
    del args[i : i + 2]
host, port, n = args[0], int(args[1]), int(args[2])
first = args[3] if len(args) > 3 else None


def sources():
    if first is None:
        while True:
            yield "127.0.0.1"
    ip = ipaddress.IPv4Address(first)
    while True:
        if ip.packed[3] not in (0, 255):
            yield str(ip)
        ip += 1


def final_line(s):
    """Reads one whole reply; returns its first three characters."""
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError(f"connection closed after {data!r}")
        data += chunk
        for line in data.split(b"\r\n")[:-1]:
            if line[3:4] == b" ":
                return line[:3].decode()


took, codes = [], {}
for src in (src for _, src in zip(range(n), sources())):
    s = socket.socket()
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.bind((src, 0))
    s.settimeout(30)
    start = time.perf_counter()
    s.connect((host, port))
    code = final_line(s)
    took.append(time.perf_counter() - start)
    codes[code] = codes.get(code, 0) + 1
    s.sendall(b"QUIT\r\n")
    try:
        final_line(s)
    except (RuntimeError, OSError):
        pass
    s.close()

if set(codes) != {"220"}:
    print(f"warning: greetings {codes}", file=sys.stderr)
if append:
    with open(append, "a") as f:
        f.writelines(f"{t * 1e6:.1f}\n" for t in took)
took.sort()
us = lambda q: took[min(len(took) - 1, int(q * len(took)))] * 1e6
print(f"n={len(took)} p50={us(0.50):.0f} p90={us(0.90):.0f} p99={us(0.99):.0f} max={took[-1] * 1e6:.0f} us")
