#!/usr/bin/env python3
"""Open N SMTP sessions to HOST:PORT, read the greeting, send EHLO, read its reply,
then hold them open until stdin closes or SECONDS pass. Prints 'ready N' when all are
established, so the caller can measure the server's memory."""
import socket, sys, time

host, port, n, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])

def reply(s):
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError("closed")
        data += chunk
        lines = data.split(b"\r\n")
        for line in lines[:-1]:
            if len(line) >= 4 and line[3:4] == b" ":
                return data
        if len(lines[-1]) == 3 and data.endswith(b"\r\n"):
            return data

socks = []
for i in range(n):
    s = socket.create_connection((host, port))
    reply(s)
    s.sendall(b"EHLO idle.test\r\n")
    reply(s)
    socks.append(s)
print("ready", len(socks), flush=True)
time.sleep(hold)
