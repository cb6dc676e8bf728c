"""Hashes shared by the core and the ledger: batch digests, Merkle roots, chain links.

Pure functions over bytes (sha256 from the standard library). Every hash is domain
separated so a digest of one kind can never be replayed as another.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import msgpack


def h(domain: bytes, *parts: bytes) -> bytes:
    """sha256 over a domain tag and length-prefixed parts (no ambiguity between splits)."""
    m = hashlib.sha256()
    m.update(len(domain).to_bytes(2, "big"))
    m.update(domain)
    for p in parts:
        m.update(len(p).to_bytes(4, "big"))
        m.update(p)
    return m.digest()


def canonical(domain: bytes, fields: tuple[object, ...]) -> bytes:
    """Canonical bytes for anything signed: domain tag + msgpack of a fixed-order tuple."""
    body: bytes = msgpack.packb(fields, use_bin_type=True)
    return domain + b"\x00" + body


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """Binary Merkle root (RFC 6962 style: leaf and node prefixes; an odd node is promoted)."""
    if not leaves:
        return h(b"medchain/merkle/empty")
    # Leaves are fixed-size ids, so one-byte prefixes suffice to separate leaves from nodes.
    sha = hashlib.sha256
    level = [sha(b"\x00" + leaf).digest() for leaf in leaves]
    while len(level) > 1:
        pairs = range(0, len(level) - 1, 2)
        nxt = [sha(b"\x01" + level[i] + level[i + 1]).digest() for i in pairs]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def batch_digest(view: int, proposer: int, timestamp_ms: int, root: bytes, count: int) -> bytes:
    """Digest that pre-prepares, prepares and commits agree on (it covers every tx via the root)."""
    return h(b"medchain/batch", canonical(b"batch", (view, proposer, timestamp_ms, root, count)))


def chain_link(seq: int, prev_hash: bytes, digest: bytes) -> bytes:
    """Block hash at height ``seq``: commits the whole history through ``prev_hash``."""
    return h(b"medchain/block", seq.to_bytes(8, "big"), prev_hash, digest)


GENESIS_HASH = h(b"medchain/genesis")
