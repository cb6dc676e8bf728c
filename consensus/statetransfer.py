"""State transfer (section 5.3.2, simplified): a replica that is behind fetches whole blocks with
their commit certificates from peers and executes them after checking each certificate. A block
is never accepted without 2f+1 valid commits for exactly its batch, so a lying peer can only
waste our time, never corrupt the chain."""

from __future__ import annotations

from typing import TYPE_CHECKING

from consensus import checkpoints, normal
from consensus.events import DropReason, Ready
from consensus.messages import FetchRequest, FetchResponse
from consensus.quorum import check_commit_certificate

if TYPE_CHECKING:
    from consensus.replica import Replica


def on_fetch_request(r: Replica, m: FetchRequest, out: Ready) -> None:
    """Served by the shell from its block store; the core only bounds the range."""
    if not r.valid_replica(m.replica) or m.replica == r.id:
        out.drop(DropReason.FETCH_FROM_UNKNOWN_REPLICA, str(m.replica), replica=m.replica)
        return
    if m.from_seq < 1 or m.to_seq < m.from_seq or m.from_seq > r.last_executed:
        return
    to_seq = min(m.to_seq, r.last_executed, m.from_seq + r.cfg.fetch_batch_blocks - 1)
    out.serve.append(FetchRequest(m.from_seq, to_seq, m.replica))


def note_position(r: Replica, replica: int, executed: int) -> None:
    """A peer's fetch (or heartbeat) names the block after its chain: where it got to. Rising,
    it executed since; and it no longer suspects the primary it suspected before (its own
    progress withdrew that suspicion, ``Replica.restart_view_timer``)."""
    known = r.peer_executed.get(replica)
    if known is None or executed > known[0]:
        r.peer_executed[replica] = (executed, r.now_ms)
        if known is not None:
            r.suspicions.pop(replica, None)


def cluster_executes_past_us(r: Replica, since_ms: int) -> bool:
    """f+1 other replicas say they executed past our last seq and got further since
    ``since_ms``: one of them is honest, so blocks are being decided without us."""
    ahead = sum(
        1
        for j, (executed, rose_ms) in r.peer_executed.items()
        if j != r.id and executed > r.last_executed and rose_ms >= since_ms
    )
    return ahead >= r.cfg.weak_quorum


def on_fetch_response(r: Replica, m: FetchResponse, out: Ready) -> None:
    cfg = r.cfg
    for block in sorted(m.blocks, key=lambda b: b.seq)[: cfg.fetch_batch_blocks]:
        if block.seq <= r.last_executed:
            continue
        if block.seq != r.last_executed + 1:
            break
        digest = block.batch.digest()
        reason = check_commit_certificate(
            block.seq, digest, block.commits, cfg.n, cfg.quorum, r.crypto
        )
        if reason is not None:
            _reject(out, m, block.seq, reason)
            return
        reason = r.app.check_txs(block.batch.tx_ids, block.batch.txs)
        if reason is not None:
            # Certificates cover ids, not signatures: a peer's corrupted copy stops here.
            _reject(out, m, block.seq, reason)
            return
        slot = r.log.get(block.seq)
        decided = slot.pre_prepare if slot is not None and slot.certificate else None
        if decided is not None and decided.digest != digest:
            out.drop(
                DropReason.FETCHED_BLOCK_CONFLICTS,
                f"seq {block.seq}",
                replica=m.replica,
                seq=block.seq,
            )
            return
        normal.execute(r, block, out)
        r.last_fetch_progress_ms = r.now_ms
    checkpoints.check_all_stable(r, out)
    normal.try_execute(r, out)
    if r.last_fetch_progress_ms == r.now_ms and r.valid_replica(m.replica):
        # That peer is ahead of us: keep pulling from it until it has nothing newer.
        start = r.last_executed + 1
        r.send_to(m.replica, FetchRequest(start, start + cfg.fetch_batch_blocks - 1, r.id), out)


def _reject(out: Ready, m: FetchResponse, seq: int, reason: str) -> None:
    detail = f"seq {seq} from {m.replica}: {reason}"
    out.drop(DropReason.FETCHED_BLOCK_REJECTED, detail, replica=m.replica, seq=seq)


def maybe_fetch(r: Replica, out: Ready) -> None:
    """While we know we are behind (checkpoints of f+1 replicas, or a decided slot above a gap),
    ask the next peer in turn for the blocks after our last executed one."""
    _note_gap(r)
    r.next_fetch_ms = r.now_ms + r.cfg.fetch_retry_ms
    if r.fetch_target <= r.last_executed:
        return
    start = r.last_executed + 1
    req = FetchRequest(start, start + r.cfg.fetch_batch_blocks - 1, r.id)
    r.send_to(_next_peer(r), req, out)


def heartbeat(r: Replica, out: Ready) -> None:
    """Every heartbeat, ask every peer for the one block after ours. A peer that has it sends
    it (and we then pull the rest from that peer); the others stay silent. So a replica that
    missed the end of a burst catches up, and every replica knows who it can still reach."""
    r.next_heartbeat_ms = r.now_ms + r.cfg.heartbeat_ms
    start = r.last_executed + 1
    r.broadcast(FetchRequest(start, start, r.id), out)


def _next_peer(r: Replica) -> int:
    r.fetch_peer = (r.fetch_peer + 1) % r.n
    if r.fetch_peer == r.id:
        r.fetch_peer = (r.fetch_peer + 1) % r.n
    return r.fetch_peer


def _note_gap(r: Replica) -> None:
    """A committed slot above a missing one means the missing one was decided without us."""
    for slot in r.log.slots():
        if slot.seq > r.last_executed + 1 and slot.certificate is not None:
            r.fetch_target = max(r.fetch_target, slot.seq)
