#!/usr/bin/env python3
"""Raw-socket QMP client for benches/qmp.rs: the floor machina is measured
against. It sends exactly the bytes machina's client sends (compact request,
numeric id counting up from 1 for qmp_capabilities) and reads each reply
line without parsing it.

Protocol with the bench: prints "ready <hex of the request for id 2>" once
connected, then for each line N on stdin performs N query-status round
trips and prints the elapsed nanoseconds.
"""
import socket
import sys
import time


def main():
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(sys.argv[1])
    buf = b""

    def read_line():
        nonlocal buf
        while b"\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise SystemExit("QMP socket closed")
            buf += chunk
        line, _, buf = buf.partition(b"\n")
        return line

    def request(cmd, n):
        return b'{"execute":"%s","id":%d}\n' % (cmd, n)

    read_line()  # greeting
    sock.sendall(request(b"qmp_capabilities", 1))
    read_line()
    next_id = 2
    print("ready", request(b"query-status", 2).hex(), flush=True)
    for line in sys.stdin:
        n = int(line)
        start = time.perf_counter_ns()
        for _ in range(n):
            sock.sendall(request(b"query-status", next_id))
            next_id += 1
            read_line()
        print(time.perf_counter_ns() - start, flush=True)


main()
