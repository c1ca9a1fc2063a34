#!/usr/bin/env python3
"""Raw-socket QMP client for benches/qmp.rs: the floor machina is measured
against. It sends exactly the bytes machina's client sends, which the bench
passes in hex (argv[2]: the qmp_capabilities request, argv[3]: the
query-status request), and reads each reply line without parsing it.

Protocol with the bench: prints "ready" once connected, then for each line
N on stdin performs N query-status round trips and prints the elapsed
nanoseconds.
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

    capabilities = bytes.fromhex(sys.argv[2])
    query = bytes.fromhex(sys.argv[3])
    read_line()  # greeting
    sock.sendall(capabilities)
    read_line()
    print("ready", flush=True)
    for line in sys.stdin:
        n = int(line)
        start = time.perf_counter_ns()
        for _ in range(n):
            sock.sendall(query)
            read_line()
        print(time.perf_counter_ns() - start, flush=True)


main()
