"""Strict readers of the fields of the ledger's JSON forms (a block, its header and its
transactions as the HTTP API serves them: ``block_to_json`` / ``header_to_json``).

Every error names the field by its path, e.g. ``block.txs[3].nonce: expected 32 hex
characters``, and every value is bounded, so any document gives a value or a clean error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from node import codec


class BlockJsonError(ValueError):
    """A block, header or transaction in JSON form is malformed; ``reason`` names the field."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def json_object(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise BlockJsonError(f"{what}: expected an object, got {type(value).__name__}")
    return value


def json_list(value: object, what: str, max_len: int) -> list[Any]:
    if not isinstance(value, list):
        raise BlockJsonError(f"{what}: expected an array, got {type(value).__name__}")
    if len(value) > max_len:
        raise BlockJsonError(f"{what}: {len(value)} elements exceeds the limit of {max_len}")
    return value


def json_field(doc: Mapping[str, Any], key: str, what: str) -> Any:
    if key not in doc:
        raise BlockJsonError(f"{what}: missing field {key!r}")
    return doc[key]


def json_int(
    doc: Mapping[str, Any], key: str, what: str, *, lo: int = 0, hi: int = codec.MAX_UINT
) -> int:
    value = json_field(doc, key, what)
    if type(value) is not int or not lo <= value <= hi:
        bounds = f">= {lo}" if hi == codec.MAX_UINT else f"in {lo}..{hi}"
        raise BlockJsonError(f"{what}.{key}: expected an integer {bounds}")
    return value


def json_hex(doc: Mapping[str, Any], key: str, what: str, size: int) -> bytes:
    """Exactly ``size`` bytes as hex."""
    value = json_field(doc, key, what)
    if type(value) is not str or len(value) != 2 * size:
        raise BlockJsonError(f"{what}.{key}: expected {2 * size} hex characters")
    return hex_bytes(value, f"{what}.{key}")


def hex_bytes(text: str, what: str) -> bytes:
    """``text`` as hex digits only (bytes.fromhex alone would also skip whitespace)."""
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise BlockJsonError(f"{what}: not valid hex") from None
    if 2 * len(raw) != len(text):
        raise BlockJsonError(f"{what}: not valid hex")
    return raw


def json_str(doc: Mapping[str, Any], key: str, what: str, max_chars: int) -> str:
    value = json_field(doc, key, what)
    if type(value) is not str or not 0 < len(value) <= max_chars or not value.isprintable():
        raise BlockJsonError(
            f"{what}.{key}: expected a printable string of 1..{max_chars} characters"
        )
    return value
