"""HTTP input discipline shared by the client API, the peer endpoint and the admin endpoints.

- Error bodies: every refusal is ``{"error": ..., "detail": ...}`` (:func:`json_error`).
- Bodies are streamed and bounded: :func:`read_body_limited` refuses as soon as a body would
  exceed its limit (a lying Content-Length or a chunked upload cannot make the node buffer
  more) and as soon as it takes longer than its deadline (a client trickling a body).
- Strict parameters: numbers are ASCII digits within stated bounds (``str.isdigit`` and
  ``int`` accept '١٢' and '²'; we do not), ids are exact hex, JSON is capped in size and depth
  before it is parsed, and its integers are refused before Python converts them when they are
  longer than an int64 can be. Every parse failure raises :class:`BadRequest` (a 4xx), never
  a ValueError or RecursionError that would surface as a 500.
- Slow clients: :func:`serve_kwargs` and :class:`GuardedRunner` close connections whose
  request headers do not arrive within the idle timeout, cap concurrent connections, and
  send no version banner in the ``Server`` header.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from typing import Any, Final

from aiohttp import web

log = logging.getLogger("medchain.http")

INT64_MAX: Final = (1 << 63) - 1
INT64_MIN: Final = -(1 << 63)
_INT64_DIGITS: Final = 19
"""Decimal digits of the largest int64: a longer digit string is refused unread."""
MAX_JSON_DEPTH: Final = 16
"""Default nesting cap of a JSON document (a POST /tx batch is 3 deep, an admin fault 4)."""
SERVER_BANNER: Final = "medchain"
"""The ``Server`` header: no software version for a scanner to match against."""
MAX_HEADERS: Final = 64
MAX_HEADER_LINE_BYTES: Final = 8190

_ASCII_DIGITS: Final = re.compile(r"[0-9]+")
_HEX: Final = re.compile(r"[0-9a-fA-F]*")
# A JSON string (escapes included), to blank out before brackets are counted.
_JSON_STRING: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_JSON_NON_BRACKET: Final = re.compile(rb"[^\[\]{}]+")
_BRACKETS: Final = bytes.maketrans(b"{}", b"[]")


class BadRequest(Exception):
    """An HTTP error answer (4xx, or 503 for overload); rendered with :func:`json_error`."""

    def __init__(self, status: int, error: str, detail: object = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.detail = detail

    def response(self) -> web.Response:
        return json_error(self.status, self.error, self.detail)


class BodyTooLarge(BadRequest):
    def __init__(self, limit: int) -> None:
        super().__init__(413, "body too large", f"request body exceeds {limit} bytes")
        self.limit = limit

    def __str__(self) -> str:
        return str(self.detail)


def json_error(status: int, error: str, detail: object = None) -> web.Response:
    """The uniform JSON error body of every medchain HTTP endpoint."""
    return web.json_response({"error": error, "detail": detail}, status=status)


# ---------------------------------------------------------------------------------------------
# bodies


async def read_body_limited(
    request: web.Request, limit: int, *, timeout_s: float | None = None
) -> bytes:
    """Read a request body, refusing (BodyTooLarge) as soon as it would exceed ``limit`` and
    (408) if it has not fully arrived within ``timeout_s``.

    Checks Content-Length first, then counts while streaming, so neither a lying header nor a
    chunked upload can make us buffer more than ``limit`` bytes.
    """
    declared = request.content_length
    if declared is not None and declared > limit:
        raise BodyTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(limit)
                chunks.append(chunk)
    except TimeoutError:
        raise BadRequest(408, "body too slow", f"body not received within {timeout_s}s") from None
    return b"".join(chunks)


# ---------------------------------------------------------------------------------------------
# numbers and ids


def parse_uint(text: str, what: str, *, lo: int = 0, hi: int = INT64_MAX) -> int:
    """``text`` as a non-negative integer in [lo, hi]: ASCII digits only, at most 19 of them
    (leading zeros count), so neither Unicode digits nor a 5,000-digit string reach ``int``."""
    if len(text) > _INT64_DIGITS or not _ASCII_DIGITS.fullmatch(text):
        raise BadRequest(400, "bad parameter", f"{what} must be an integer in {lo}..{hi}")
    value = int(text)
    if not lo <= value <= hi:
        raise BadRequest(400, "bad parameter", f"{what} must be in {lo}..{hi}, got {value}")
    return value


def query_uint(
    request: web.Request, name: str, default: int, *, lo: int = 0, hi: int = INT64_MAX
) -> int:
    """Query parameter ``name`` through :func:`parse_uint`; ``default`` if absent. A parameter
    given twice is refused (which one a proxy or the node would read is ambiguous)."""
    values = request.query.getall(name, [])
    if not values:
        return default
    if len(values) > 1:
        raise BadRequest(400, "bad parameter", f"{name} given {len(values)} times")
    return parse_uint(values[0], name, lo=lo, hi=hi)


def parse_hex(text: object, size: int, what: str) -> bytes:
    """Exactly ``2*size`` hex digits (either case), nothing else: no spaces, no prefix.
    ValueError naming ``what`` otherwise (callers map it to their 4xx)."""
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a hex string")
    if not _HEX.fullmatch(text):
        raise ValueError(f"{what} is not valid hex")
    if len(text) != 2 * size:
        raise ValueError(f"{what} must be {size} bytes ({2 * size} hex characters)")
    return bytes.fromhex(text)


def parse_hex_range(text: object, lo: int, hi: int, what: str) -> bytes:
    """Like :func:`parse_hex` for a length between ``lo`` and ``hi`` bytes."""
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a hex string")
    if len(text) % 2 or not 2 * lo <= len(text) <= 2 * hi:
        raise ValueError(f"{what} must be {lo}..{hi} bytes of hex")
    if not _HEX.fullmatch(text):
        raise ValueError(f"{what} is not valid hex")
    return bytes.fromhex(text)


# ---------------------------------------------------------------------------------------------
# JSON


def json_depth_exceeds(body: bytes, max_depth: int) -> bool:
    """True if ``body``'s brackets nest deeper than ``max_depth``, decided without parsing:
    strings are blanked out, then innermost pairs are removed once per level, each pass in C,
    at most ``max_depth`` passes. Unbalanced brackets that do not nest too deep are left for
    the parser to refuse."""
    # Depth depends only on the order of openings and closings, not on the bracket kinds.
    skeleton = _JSON_NON_BRACKET.sub(b"", _JSON_STRING.sub(b"", body)).translate(_BRACKETS)
    for _ in range(max_depth):
        if b"[]" not in skeleton:
            break
        skeleton = skeleton.replace(b"[]", b"")
    if b"[]" in skeleton:
        return True
    # No pair left: the rest is closings then openings (not JSON); the openings still nest.
    return skeleton.count(b"[") > max_depth


def _strict_int(text: str) -> int:
    digits = text[1:] if text.startswith("-") else text
    if len(digits) > _INT64_DIGITS:
        raise _JsonRefused(f"integer of {len(digits)} digits is beyond 64 bits")
    value = int(text)
    if not INT64_MIN <= value <= INT64_MAX:
        raise _JsonRefused(f"integer {text} is beyond 64 bits")
    return value


def _no_constant(name: str) -> Any:
    raise _JsonRefused(f"{name} is not JSON")


class _JsonRefused(ValueError):
    pass


def parse_json(body: bytes, *, max_bytes: int, max_depth: int = MAX_JSON_DEPTH) -> object:
    """Parse a JSON body, refusing (BadRequest 400/413) what is too big, too deep, not UTF-8,
    not JSON, holds NaN/Infinity or an integer beyond int64. Nothing else escapes."""
    if len(body) > max_bytes:
        raise BodyTooLarge(max_bytes)
    if json_depth_exceeds(body, max_depth):
        raise BadRequest(400, "malformed JSON", f"nested deeper than {max_depth} (or unbalanced)")
    try:
        return json.loads(body, parse_int=_strict_int, parse_constant=_no_constant)
    except _JsonRefused as e:
        raise BadRequest(400, "malformed JSON", str(e)) from None
    except UnicodeDecodeError:
        raise BadRequest(400, "malformed JSON", "body is not UTF-8") from None
    except json.JSONDecodeError as e:
        raise BadRequest(400, "malformed JSON", f"{e.msg} at offset {e.pos}") from None
    except (RecursionError, ValueError) as e:  # a backstop: the checks above should catch all
        raise BadRequest(400, "malformed JSON", type(e).__name__) from None


# ---------------------------------------------------------------------------------------------
# the server: slow clients, connection cap, no banner


async def _no_banner(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER_BANNER


def harden_app(app: web.Application) -> None:
    """Response hooks every medchain app gets: the ``Server`` header without a version."""
    app.on_response_prepare.append(_no_banner)


def serve_kwargs(idle_timeout_ms: int) -> dict[str, Any]:
    """Request-handler settings: a connection that has not delivered complete request headers
    within ``idle_timeout_ms`` of opening (or of its last response) is closed, whether it is
    idle or trickling a header byte at a time; headers are bounded in count and line length."""
    return {
        "keepalive_timeout": idle_timeout_ms / 1000.0,
        "max_headers": MAX_HEADERS,
        "max_line_size": MAX_HEADER_LINE_BYTES,
        "max_field_size": MAX_HEADER_LINE_BYTES,
        "access_log": None,
    }


class _Refused(asyncio.Protocol):
    """A connection over the cap: closed at once, nothing read."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class ConnectionCap:
    """A protocol factory around aiohttp's: beyond ``max_connections`` open connections a new
    one is closed on accept (counted), so a flood of sockets cannot exhaust memory or fds."""

    def __init__(self, inner: web.Server, max_connections: int) -> None:
        self._inner = inner
        self._max = max_connections
        self.refused = 0

    def __call__(self) -> asyncio.BaseProtocol:
        if len(self._inner.connections) >= self._max:
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                log.warning("connection cap %d reached; refused %d", self._max, self.refused)
            return _Refused()
        return self._inner()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class GuardedRunner(web.AppRunner):
    """An AppRunner whose sites accept at most ``max_connections`` connections at once."""

    def __init__(self, app: web.Application, *, max_connections: int, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._max_connections = max_connections
        self._cap: ConnectionCap | None = None

    @property
    def server(self) -> Any:
        inner = super().server
        if inner is None:
            return None
        if self._cap is None:
            self._cap = ConnectionCap(inner, self._max_connections)
        return self._cap

    @property
    def refused_connections(self) -> int:
        return 0 if self._cap is None else self._cap.refused

    def tcp_site(self, host: str, port: int, **kwargs: Any) -> web.TCPSite:
        """A TCP site of this runner whose kernel accept queue holds ``max_connections``.

        aiohttp's default backlog is 128. A burst of clients connecting at once (a load
        generator reopening the connections its timed-out requests closed, every peer
        reconnecting after a pause) while the event loop is busy overflows it; the kernel then
        drops their SYNs, and a dropped SYN is sent again only after 1 s, then 3 s (RFC 6298's
        initial RTO, doubling): the clients wait seconds on a node that sits idle. The kernel
        caps the backlog at net.core.somaxconn (4096 on current kernels)."""
        return web.TCPSite(self, host, port, backlog=self._max_connections, **kwargs)


Handler = Callable[[web.Request], Any]

__all__ = [
    "INT64_MAX",
    "MAX_JSON_DEPTH",
    "BadRequest",
    "BodyTooLarge",
    "ConnectionCap",
    "GuardedRunner",
    "harden_app",
    "json_depth_exceeds",
    "json_error",
    "parse_hex",
    "parse_hex_range",
    "parse_json",
    "parse_uint",
    "query_uint",
    "read_body_limited",
    "serve_kwargs",
]
