#!/usr/bin/env python3
"""Hold many SMTP sessions open: connect from several 127.0.0.x source addresses,
read the greeting, send EHLO. Then try EXTRA more from the first address (they must
be refused by the per-address limit). Prints counts, waits for stdin to close (or
HOLD seconds), then closes everything."""
import selectors, socket, sys, time

host, port, per_ip, ips, extra, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])

def open_session(src):
    s = socket.socket()
    s.bind((src, 0))
    s.settimeout(30)
    s.connect((host, port))
    greeting = s.recv(512)
    if not greeting.startswith(b"220"):
        s.close()
        return None, greeting[:3].decode(errors="replace")
    s.sendall(b"EHLO load.test\r\n")
    data = b""
    while not data.endswith(b"\r\n") or b"250 " not in data:
        chunk = s.recv(1024)
        if not chunk:
            break
        data += chunk
    return s, "220"

held, codes = [], {}
start = time.time()
for i in range(ips):
    src = f"127.0.0.{i + 1}"
    for _ in range(per_ip):
        s, code = open_session(src)
        codes[code] = codes.get(code, 0) + 1
        if s:
            held.append(s)
print(f"opened {len(held)} sessions in {time.time() - start:.1f}s; replies {codes}", flush=True)
extra_codes = {}
for _ in range(extra):
    s, code = open_session("127.0.0.1")
    extra_codes[code] = extra_codes.get(code, 0) + 1
    if s:
        held.append(s)
print(f"extra from 127.0.0.1: {extra_codes}", flush=True)
print("ready", flush=True)
time.sleep(hold)
for s in held:
    s.close()
print("closed", flush=True)
