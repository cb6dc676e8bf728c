"""What an operator-signed admin request is: its actions, the bytes signed, the client side.

Every admin request is signed with the consortium operator's Ed25519 key (``medchain init``
writes it to ``keys/operator.key``; node configs hold its public key under ``[operator]``). The
signature, hex in the ``X-Medchain-Operator-Signature`` header, covers
:func:`admin_signing_bytes`: the canonical bytes (``consensus.hashing.canonical``) of the
action, the target node id, the nonce, the timestamp and the request's parameters as canonical
JSON (sorted keys, no spaces). Binding the action and the node id means a signed "clear" cannot
be replayed as a "fault", nor a request for node 1 against node 2; the timestamp (at most 30 s
from the node's clock) and the node's cache of recently seen nonces (:mod:`node.faults.admin`)
stop replays of the same request.

Kept apart from the endpoints so that a client (``medchain fault``, the scenario runner) signs
requests without loading the node's HTTP server side.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from consensus.hashing import canonical
from node.crypto import Signer

ADMIN_DOMAIN: Final = b"medchain/admin/v1"
SIGNATURE_HEADER: Final = "X-Medchain-Operator-Signature"
MAX_SKEW_MS: Final = 30_000
NONCE_MIN_BYTES: Final = 16
NONCE_MAX_BYTES: Final = 64
SIGNATURE_BYTES: Final = 64

ACTION_FAULT: Final = "fault"
ACTION_CLEAR: Final = "clear"
ACTION_LIST: Final = "list"
ENVELOPE_KEYS: Final = frozenset({"nonce", "timestamp_ms"})
"""The fields every request carries beside its action's parameters."""
ACTION_PARAMS: Final[dict[str, frozenset[str]]] = {
    ACTION_FAULT: frozenset({"fault"}),
    ACTION_CLEAR: frozenset({"id"}),
    ACTION_LIST: frozenset(),
}
"""Each action and the parameters it takes."""

WallClockMs = Callable[[], int]


def canonical_json(value: object) -> str:
    """The one JSON spelling of ``value`` that is signed: sorted keys, no whitespace."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def admin_signing_bytes(
    action: str, node_id: int, params: Mapping[str, Any], nonce: bytes, timestamp_ms: int
) -> bytes:
    return canonical(
        ADMIN_DOMAIN, (action, node_id, nonce, timestamp_ms, canonical_json(dict(params)))
    )


def wall_ms() -> int:
    """The wall clock in milliseconds: what ``timestamp_ms`` is measured on."""
    return int(time.time() * 1000)


def sign_admin_request(
    operator_secret: bytes,
    action: str,
    node_id: int,
    params: Mapping[str, Any],
    *,
    now_ms: int | None = None,
    nonce: bytes | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Client side: the request fields (JSON body for POST, query for GET) and the headers.

    The fields are ``params`` plus ``nonce`` and ``timestamp_ms``."""
    if action not in ACTION_PARAMS:
        raise ValueError(f"unknown admin action {action!r}")
    nonce = os.urandom(NONCE_MIN_BYTES) if nonce is None else nonce
    ts = wall_ms() if now_ms is None else now_ms
    signature = Signer(operator_secret).sign(
        admin_signing_bytes(action, node_id, params, nonce, ts)
    )
    fields = {**params, "nonce": nonce.hex(), "timestamp_ms": ts}
    return fields, {SIGNATURE_HEADER: signature.hex()}


__all__ = [
    "ACTION_CLEAR",
    "ACTION_FAULT",
    "ACTION_LIST",
    "ACTION_PARAMS",
    "ADMIN_DOMAIN",
    "ENVELOPE_KEYS",
    "MAX_SKEW_MS",
    "SIGNATURE_HEADER",
    "admin_signing_bytes",
    "canonical_json",
    "sign_admin_request",
    "wall_ms",
]
