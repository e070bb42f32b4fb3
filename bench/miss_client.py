#!/usr/bin/env python3
"""One HTTP/1.1 GET with `Connection: close`, read to the end of the connection.

usage: miss_client.py HOST:PORT PATH

Prints one JSON line: status, body bytes, `client_s` (request sent -> the last body byte of the
Content-Length arrived: what a client sees) and `eof_s` (-> the server closed the connection).
gfcache closes a `Connection: close` exchange only when its request path is done, which for a
miss is after the fill was committed to the cache, so `eof_s` is the miss *with its fill*.
The body is counted, not kept: one 4 MiB buffer is reused for every read.
"""

import json
import socket
import sys
import time


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    path = sys.argv[2]
    buf = bytearray(4 << 20)
    view = memoryview(buf)
    sock = socket.create_connection((host, int(port)))
    started = time.perf_counter()
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    head = b""
    status = length = None
    body = 0
    client_s = None
    while True:
        n = sock.recv_into(view)
        if n == 0:
            break
        if status is None:
            head += bytes(view[:n])
            end = head.find(b"\r\n\r\n")
            if end < 0:
                continue
            lines = head[:end].decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            body = len(head) - end - 4
        else:
            body += n
        if client_s is None and length is not None and body >= length:
            client_s = time.perf_counter() - started
    eof_s = time.perf_counter() - started
    sock.close()
    print(json.dumps({"status": status, "bytes": body, "length": length,
                      "client_s": client_s, "eof_s": eof_s}))


if __name__ == "__main__":
    main()
