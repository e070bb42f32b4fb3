#!/usr/bin/env python3
"""Holds idle connections open against a GetFile server, for bench/frontend.sh.

usage: idle_holder.py HOST PORT SILENT HALF

Opens SILENT connections that send nothing and HALF connections that send the start of a
request header (`GETFILE GET /hel`) once and nothing more, prints `holding N` when all are
open, and waits. On SIGTERM it prints one JSON line: how many of each kind the server still
holds open (a peek finds neither data nor an end of stream), and exits.
"""
import json
import resource
import signal
import socket
import sys
import time

HALF_HEADER = b"GETFILE GET /hel"


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def connect(host, port, deadline):
    """A blocking connect, retried while the server's backlog is full."""
    while True:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.connect((host, port))
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def still_open(sock):
    """Neither data (an INVALID answer) nor an end of stream is waiting."""
    try:
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def main():
    host, port, silent, half = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    raise_nofile()
    deadline = time.monotonic() + 60
    held = {"silent": [], "half": []}
    for kind, count in (("silent", silent), ("half", half)):
        for _ in range(count):
            sock = connect(host, port, deadline)
            if kind == "half":
                sock.sendall(HALF_HEADER)
            held[kind].append(sock)
    print(f"holding {silent + half}", flush=True)

    def report(*_):
        result = {f"{kind}_open": sum(map(still_open, socks)) for kind, socks in held.items()}
        result.update({kind: len(socks) for kind, socks in held.items()})
        print(json.dumps(result), flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, report)
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
