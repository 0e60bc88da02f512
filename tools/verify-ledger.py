#!/usr/bin/env python3
"""Re-verify a bpi-os ledger store with nothing but Python's standard library,
following docs/ledger.md: frames, checksums, the block encoding and hash, the
chain, and the RFC 9162 Merkle root against the checkpoint's root.

usage: verify-ledger.py STORE_DIR
Prints "ok <blocks> <root hex>" and exits 0, or names the first bad height
and exits 1. (It checks the checkpoint's root, not its Ed25519 signature:
the standard library has no Ed25519.)"""

import base64, hashlib, struct, sys, zlib

TAG = b"BPI-LEDGER-BLOCK-V1"


def fields(content):
    """Walks the encoding; returns (height, prev_hash) or raises ValueError."""
    if not content.startswith(TAG):
        raise ValueError("no block tag")
    at = len(TAG)
    height, _timestamp = struct.unpack_from(">QQ", content, at)
    at += 16
    out = []
    for name in ("prev_hash", "producer", "category", "action", "user", "hostname"):
        (n,) = struct.unpack_from(">I", content, at)
        out.append(content[at + 4 : at + 4 + n])
        at += 4 + n
    at += 4  # pid
    (n,) = struct.unpack_from(">I", content, at)
    at += 4 + n
    if at != len(content):
        raise ValueError("length mismatch")
    return height, out[0]


def mth(leaves, lo=0, hi=None):
    """MTH(D[lo:hi]) exactly as RFC 9162 section 2.1.1 defines it."""
    hi = len(leaves) if hi is None else hi
    n = hi - lo
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return leaves[lo]
    k = 1 << ((n - 1).bit_length() - 1)  # largest power of two below n
    return hashlib.sha256(b"\x01" + mth(leaves, lo, lo + k) + mth(leaves, lo + k, hi)).digest()


def main(store):
    log = open(f"{store}/blocks.log", "rb").read()
    at, height, prev, leaves = 0, 0, b"", []
    while at < len(log):
        height += 1
        if len(log) - at < 8:
            return bad(height, "incomplete header")
        n, crc = struct.unpack_from(">II", log, at)
        payload = log[at + 8 : at + 8 + n]
        if len(payload) != n or zlib.crc32(payload) != crc:
            return bad(height, "frame length or checksum")
        content, stored = payload[:-32], payload[-32:]
        try:
            h, p = fields(content)
        except (ValueError, struct.error) as e:
            return bad(height, f"encoding: {e}")
        if h != height or p != prev:
            return bad(height, "height or prev_hash")
        if hashlib.sha256(content).digest() != stored:
            return bad(height, "hash")
        leaves.append(hashlib.sha256(b"\x00" + stored).digest())
        prev, at = stored, at + 8 + n
    lines = open(f"{store}/checkpoint").read().split("\n")
    size, root = int(lines[1]), base64.b64decode(lines[2])
    if size > len(leaves) or mth(leaves[:size]) != root:
        return bad(size, "checkpoint root does not match")
    print(f"ok {len(leaves)} {mth(leaves).hex()}")
    return 0


def bad(height, what):
    print(f"bad {height}: {what}")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
