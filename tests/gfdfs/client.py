#!/usr/bin/env python3
"""An independent gfdfs client on Python grpcio, with stubs generated from the repository's
.proto at test time (tests/gfdfs.rs runs grpc_tools.protoc into a temp dir on PYTHONPATH).

usage: client.py roundtrip ADDR       List, Store, Stat, Fetch round trips and the refusals
       client.py stall ADDR PATH      takes the lock, sends a header and 1 MiB, prints "sent",
                                      then hangs (the test SIGKILLs it mid-store)
"""
import os
import sys
import time

import grpc

from gfdfs.v1 import dfs_pb2, dfs_pb2_grpc

CHUNK = 256 * 1024


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), bitwise: the test data is small, no extra package needed."""
    crc = 0xFFFFFFFF
    table = crc32c.table
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


crc32c.table = _table()


def expect_code(code, call, *args, **kwargs):
    try:
        result = call(*args, **kwargs)
        if hasattr(result, "__iter__") and not isinstance(result, (bytes, str)):
            for _ in result:
                pass
    except grpc.RpcError as error:
        assert error.code() == code, f"expected {code}, got {error.code()}: {error.details()}"
        return
    raise AssertionError(f"expected {code}, the call succeeded")


def store(stub, path, data, client_id, mtime=None, checksum=None, size=None):
    """Stores `data`; `checksum` and `size` announce other values than the data's own (a
    file edited between its checksum and its upload, a sender that lies)."""
    mtime = mtime if mtime is not None else time.time_ns()
    checksum = checksum if checksum is not None else crc32c(data)
    size = size if size is not None else len(data)
    def messages():
        yield dfs_pb2.StoreRequest(path=path, mtime=mtime, checksum=checksum,
                                   size=size, client_id=client_id)
        for offset in range(0, len(data), CHUNK):
            yield dfs_pb2.StoreRequest(data=data[offset:offset + CHUNK])
    return stub.Store(messages(), timeout=30)


def fetch(stub, path):
    first, chunks = None, []
    for reply in stub.Fetch(dfs_pb2.FetchRequest(path=path), timeout=30):
        if first is None:
            first = reply
        chunks.append(reply.data)
    return first, b"".join(chunks)


def roundtrip(addr):
    channel = grpc.insecure_channel(addr)
    grpc.channel_ready_future(channel).result(timeout=10)
    stub = dfs_pb2_grpc.DfsStub(channel)

    listing = stub.List(dfs_pb2.ListRequest(), timeout=10)
    assert list(listing.entries) == [], listing

    data = os.urandom(700_000) + b"text\r\nwith CRLF\r\n\x00binary"
    stub.AcquireWriteLock(dfs_pb2.AcquireWriteLockRequest(path="/py/file.bin", client_id="py"),
                          timeout=10)
    reply = store(stub, "/py/file.bin", data, "py", mtime=1_700_000_000_123_456_789)
    assert reply.outcome == dfs_pb2.STORE_OUTCOME_STORED, reply

    stat = stub.Stat(dfs_pb2.StatRequest(path="py/file.bin"), timeout=10)
    assert stat.size == len(data), stat
    assert stat.mtime == 1_700_000_000_123_456_789, stat
    assert stat.checksum == crc32c(data), stat

    first, fetched = fetch(stub, "/py/file.bin")
    assert fetched == data, "fetched bytes differ"
    assert first.size == len(data) and first.checksum == crc32c(data), first

    listing = stub.List(dfs_pb2.ListRequest(), timeout=10)
    entries = [(e.path, e.size, e.mtime, e.checksum) for e in listing.entries]
    assert entries == [("py/file.bin", len(data), 1_700_000_000_123_456_789, crc32c(data))], entries

    # The same content again moves no data and needs the lock again (a store releases it).
    expect_code(grpc.StatusCode.FAILED_PRECONDITION, store, stub, "py/file.bin", data, "py")
    stub.AcquireWriteLock(dfs_pb2.AcquireWriteLockRequest(path="py/file.bin", client_id="py"),
                          timeout=10)
    reply = store(stub, "py/file.bin", data, "py")
    assert reply.outcome == dfs_pb2.STORE_OUTCOME_UNCHANGED, reply

    # Data that is not what was announced (another checksum: the file changed between its
    # checksum and its upload; fewer or more bytes) is refused, and the stored version stays.
    for wrong in ({"checksum": crc32c(data) ^ 1}, {"size": len(data) + 1},
                  {"size": len(data) - 1}):
        stub.AcquireWriteLock(dfs_pb2.AcquireWriteLockRequest(path="py/file.bin",
                                                              client_id="py"), timeout=10)
        edited = data[:-1] + b"!"
        expect_code(grpc.StatusCode.DATA_LOSS, store, stub, "py/file.bin", edited, "py",
                    **wrong)
        stub.ReleaseWriteLock(dfs_pb2.ReleaseWriteLockRequest(path="py/file.bin",
                                                              client_id="py"), timeout=10)
    _, fetched = fetch(stub, "py/file.bin")
    assert fetched == data, "a refused store changed the file"

    # One writer per file.
    stub.AcquireWriteLock(dfs_pb2.AcquireWriteLockRequest(path="py/file.bin", client_id="py"),
                          timeout=10)
    expect_code(grpc.StatusCode.RESOURCE_EXHAUSTED, stub.AcquireWriteLock,
                dfs_pb2.AcquireWriteLockRequest(path="py/file.bin", client_id="other"), timeout=10)
    expect_code(grpc.StatusCode.RESOURCE_EXHAUSTED, store, stub, "py/file.bin", b"x", "other")
    stub.ReleaseWriteLock(dfs_pb2.ReleaseWriteLockRequest(path="py/file.bin", client_id="py"),
                          timeout=10)

    # Refusals.
    for bad in ("../escape", "/a/../../b", "a\x00b", ".gfdfs/tombstones.json"):
        expect_code(grpc.StatusCode.INVALID_ARGUMENT, stub.Stat,
                    dfs_pb2.StatRequest(path=bad), timeout=10)
    expect_code(grpc.StatusCode.INVALID_ARGUMENT, fetch, stub, "../../etc/passwd")
    expect_code(grpc.StatusCode.NOT_FOUND, stub.Stat, dfs_pb2.StatRequest(path="missing"),
                timeout=10)
    expect_code(grpc.StatusCode.NOT_FOUND, fetch, stub, "/missing")
    # A Watch stream never ends by itself: the deadline ends it.
    expect_code(grpc.StatusCode.DEADLINE_EXCEEDED, stub.Watch, dfs_pb2.WatchRequest(),
                timeout=0.3)
    print("python roundtrip ok")


def stall(addr, path):
    channel = grpc.insecure_channel(addr)
    stub = dfs_pb2_grpc.DfsStub(channel)
    stub.AcquireWriteLock(dfs_pb2.AcquireWriteLockRequest(path=path, client_id="stalled"),
                          timeout=10)
    size = 8 << 20
    def messages():
        yield dfs_pb2.StoreRequest(path=path, mtime=time.time_ns(), checksum=1, size=size,
                                   client_id="stalled", data=os.urandom(1 << 20))
        print("sent", flush=True)
        time.sleep(3600)
    stub.Store(messages(), timeout=3600)


def stall_many(addr, count):
    """`count` uploads (10 per connection), each sending its first 64 KiB, then nothing more
    until stdin closes or the process dies."""
    import threading
    release = threading.Event()
    channels = [grpc.insecure_channel(addr) for _ in range((count + 9) // 10)]
    calls = []
    for n in range(count):
        stub = dfs_pb2_grpc.DfsStub(channels[n // 10])
        path = f"stalled/{n}.bin"
        stub.AcquireWriteLock(dfs_pb2.AcquireWriteLockRequest(path=path, client_id="stalled"),
                              timeout=10)
        def messages(path=path):
            yield dfs_pb2.StoreRequest(path=path, mtime=time.time_ns(), checksum=1,
                                       size=8 << 20, client_id="stalled",
                                       data=os.urandom(64 << 10))
            release.wait()
        calls.append(stub.Store.future(messages(), timeout=3600))
    print("started", flush=True)
    sys.stdin.read()
    release.set()


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "roundtrip":
        roundtrip(sys.argv[2])
    elif mode == "stall":
        stall(sys.argv[2], sys.argv[3])
    elif mode == "stall_many":
        stall_many(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(f"unknown mode {mode}")
