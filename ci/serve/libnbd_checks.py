#!/usr/bin/python3
"""NBD protocol checks with python3-libnbd (a real, independent client).

Usage: libnbd_checks.py URI [--strict]

Checks structured replies, base:allocation block status, FUA writes,
flush, trim, write-zeroes (with fast-zero when offered), multi-conn
consistency, and that bad requests fail cleanly without killing the
connection. --strict also requires every capability iomem serve offers
(qemu-nbd is run without it, to show the checks themselves are right).
Prints 'N passed, 0 failed' on success; exits non-zero on the first failure.
"""
import os
import sys

import nbd

uri = sys.argv[1]
strict = "--strict" in sys.argv[2:]
passed = 0


def check(cond, what):
    global passed
    if not cond:
        print(f"libnbd: FAILED: {what}", file=sys.stderr)
        print(f"{passed} passed, 1 failed")
        sys.exit(1)
    passed += 1


def connect():
    h = nbd.NBD()
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.connect_uri(uri)
    return h


h = connect()
size = h.get_size()
check(size >= 64 << 20, f"export size {size}")
check(h.get_structured_replies_negotiated(), "structured replies negotiated")
check(h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION), "base:allocation selected")
check(h.can_flush() and h.can_fua(), "flush and FUA offered")
if strict:
    for cap in ("can_trim", "can_zero", "can_fast_zero", "can_multi_conn", "can_df"):
        check(getattr(h, cap)(), cap)
minimum = h.get_block_size(nbd.SIZE_MINIMUM)
check(minimum in (1, 512, 4096), f"minimum block size {minimum}")

# Pattern write (FUA) and read back, several sizes, structured reads.
for i, n in enumerate((4096, 65536, 1 << 20)):
    off = i * (2 << 20)
    data = os.urandom(n)
    h.pwrite(data, off, nbd.CMD_FLAG_FUA)
    check(h.pread(n, off) == data, f"read back {n} bytes at {off}")
    chunks = []

    def chunk(buf, offset, status, err):
        chunks.append((offset, len(buf), status))
        return 0

    got = h.pread_structured(n, off, chunk)
    check(got == data and chunks, "structured read chunks")
h.flush()

# Block status over a written range: extents cover the range.
extents = []


def cb(metacontext, offset, entries, err):
    if metacontext == nbd.CONTEXT_BASE_ALLOCATION:
        extents.extend(entries)
    return 0


h.block_status(1 << 20, 0, cb)
check(len(extents) >= 2 and sum(extents[0::2]) >= 4096, f"block status extents {extents[:8]}")
written_flags = extents[1]
check(written_flags & nbd.STATE_HOLE == 0, "written data is not reported as a hole")

# Trim (the NBD spec leaves trimmed data unspecified; iomem's unmap reads
# back zeroes, so only --strict checks that) and zero read back as zeroes.
if h.can_trim():
    h.trim(65536, 2 << 20)
    if strict:
        check(h.pread(65536, 2 << 20) == bytes(65536), "trimmed range reads zero")
if h.can_zero():
    h.zero(8192, 0, nbd.CMD_FLAG_FUA)
    check(h.pread(8192, 0) == bytes(8192), "zeroed range reads zero")
    if h.can_fast_zero():
        h.zero(4096, 4 << 20, nbd.CMD_FLAG_FAST_ZERO)
        check(h.pread(4096, 4 << 20) == bytes(4096), "fast zero")

# Multi-conn: a write on one connection, flushed, is seen on another.
if h.can_multi_conn():
    h2 = connect()
    data = os.urandom(65536)
    h2.pwrite(data, 8 << 20)
    h2.flush()
    check(h.pread(65536, 8 << 20) == data, "multi-conn: second connection's write visible")
    h2.shutdown()

# Bad requests fail and the connection survives (libnbd's own checks are
# relaxed so the server sees them).
h.set_strict_mode(0)
for what, fn in (
    ("read past the end", lambda: h.pread(4096, size)),
    ("write past the end", lambda: h.pwrite(bytes(4096), size - 2048)),
):
    try:
        fn()
        check(False, f"{what} must fail")
    except nbd.Error:
        passed += 1
check(h.pread(4096, 0) == h.pread(4096, 0), "connection still usable")
h.shutdown()
print(f"{passed} passed, 0 failed")
