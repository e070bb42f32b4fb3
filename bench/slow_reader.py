#!/usr/bin/env python3
"""Slow GetFile readers, for bench/frontend.sh.

usage: slow_reader.py HOST PORT PATH READERS BYTES_PER_SECOND

Opens READERS connections with a small receive buffer (SO_RCVBUF 16 KiB, set before the
connect so the window stays small), sends `GETFILE GET PATH` on each, prints `started N`, and
then reads every connection at BYTES_PER_SECOND: every 50 ms each gets a budget of
BYTES_PER_SECOND / 20 bytes, taken in recv calls of at most 4 KiB. On SIGTERM it prints one
JSON line (bytes read in all, the mean rate per reader, how many got any byte and their mean
rate, how many the server closed) and exits.
"""
import json
import resource
import signal
import socket
import sys
import time

TICK = 0.05
RECV_SIZE = 4096
# Small next to the default (autotuned to megabytes), and large enough to hold one tick's
# budget: the sender refills it between ticks.
RCVBUF = 16384


def main():
    host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    readers, rate = int(sys.argv[4]), int(sys.argv[5])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    socks = []
    for _ in range(readers):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sock.connect((host, port))
        sock.sendall(f"GETFILE GET {path}\r\n\r\n".encode())
        sock.setblocking(False)
        socks.append(sock)
    received = [0] * readers
    closed = [False] * readers
    started = time.monotonic()
    print(f"started {readers}", flush=True)

    def report(*_):
        seconds = max(time.monotonic() - started, 1e-9)
        print(json.dumps({
            "readers": readers,
            "seconds": seconds,
            "bytes": sum(received),
            "mean_rate_bytes_per_s": sum(received) / readers / seconds,
            "got_bytes": sum(1 for n in received if n > 0),
            "mean_rate_of_those_bytes_per_s": sum(received) / max(1, sum(1 for n in received if n > 0)) / seconds,
            "closed_by_server": sum(closed),
        }), flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, report)
    budget = int(rate * TICK)
    next_tick = time.monotonic()
    while True:
        for i, sock in enumerate(socks):
            if closed[i]:
                continue
            left = budget
            while left > 0:
                try:
                    data = sock.recv(min(left, RECV_SIZE))
                except BlockingIOError:
                    break
                except OSError:
                    closed[i] = True
                    break
                if not data:
                    closed[i] = True
                    break
                received[i] += len(data)
                left -= len(data)
        next_tick += TICK
        time.sleep(max(0.0, next_tick - time.monotonic()))


if __name__ == "__main__":
    main()
