"""The cross-audit's bounded HTTP client for a peer's API (also used by ``medchain audit``).

Built on the read path's :class:`node.repair.BlockFetcher` (one keep-alive session, a timeout
and a size bound on every answer): status, pages of blocks, pages of headers.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from node.repair import BlockFetcher, PeerError


@dataclass(frozen=True, slots=True)
class PeerStatus:
    height: int
    head_hash: bytes | None
    stable_seq: int | None
    view: int | None


def parse_status(doc: object) -> PeerStatus:
    """The fields the audit needs from ``GET /status``; PeerError if ``height`` is missing."""
    if not isinstance(doc, dict):
        raise PeerError("status is not a JSON object")
    height = doc.get("height")
    if type(height) is not int or height < 0:
        raise PeerError("status has no valid height")
    head = doc.get("head_hash", doc.get("head"))
    head_hash: bytes | None = None
    if isinstance(head, str):
        with contextlib.suppress(ValueError):
            head_hash = bytes.fromhex(head)
    stable = doc.get("stable_seq", doc.get("stable_checkpoint", doc.get("checkpoint")))
    if isinstance(stable, dict):
        stable = stable.get("seq")
    view = doc.get("view")
    return PeerStatus(
        height=height,
        head_hash=head_hash if head_hash is not None and len(head_hash) == 32 else None,
        stable_seq=stable if type(stable) is int else None,
        view=view if type(view) is int else None,
    )


class PeerClient(BlockFetcher):
    """Bounded GETs against a peer's HTTP API: what the cross-audit asks for."""

    async def status(self, base: str) -> PeerStatus:
        return parse_status(await self.get_json(f"{base}/status"))

    async def blocks(
        self, base: str, from_height: int, limit: int, *, payload: bool = False
    ) -> list[object]:
        """Raw block documents of ``GET /blocks?from=&limit=`` (``{"blocks": [...]}`` or a
        bare array); with ``payload``, txs carry their payloads (so their hashes are checked)."""
        return await self._page(base, from_height, limit, "&payload=1" if payload else "")

    async def headers(self, base: str, from_height: int, limit: int) -> list[object]:
        """Raw header documents of ``GET /blocks?from=&limit=&txs=0`` (no transactions)."""
        return await self._page(base, from_height, limit, "&txs=0")

    async def _page(self, base: str, from_height: int, limit: int, extra: str) -> list[object]:
        doc = await self.get_json(f"{base}/blocks?from={from_height}&limit={limit}{extra}")
        items = doc.get("blocks") if isinstance(doc, dict) else doc
        if not isinstance(items, list):
            raise PeerError("GET /blocks did not answer a list of blocks")
        return items
