#!/usr/bin/env python3
"""QMP client using the official qemu.qmp library (pip install qemu.qmp),
for benches/qmp.rs. Same protocol as raw.py: prints "ready" once connected,
then for each line N on stdin performs N query-status round trips and
prints the elapsed nanoseconds.
"""
import asyncio
import sys
import time

from qemu.qmp import QMPClient


async def rounds(qmp, n):
    start = time.perf_counter_ns()
    for _ in range(n):
        await qmp.execute("query-status")
    return time.perf_counter_ns() - start


def main():
    loop = asyncio.new_event_loop()
    qmp = QMPClient("bench")
    loop.run_until_complete(qmp.connect(sys.argv[1]))
    print("ready", flush=True)
    for line in sys.stdin:
        print(loop.run_until_complete(rounds(qmp, int(line))), flush=True)
    loop.run_until_complete(qmp.disconnect())


main()
