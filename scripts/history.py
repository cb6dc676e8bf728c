"""Client history checking: no acknowledged write lost, nothing committed twice, chains agree.

The scenario runner's load client records one :class:`TxRecord` per transaction it submitted:
when, to which node, whether the node accepted it, and whether (and where) it later saw the
transaction committed. After the cluster has healed and settled, the runner fetches every
honest node's chain over HTTP and hands both to the checks here:

* ``accepted_committed``: every transaction an honest node accepted with 202 is on every
  honest node's chain exactly once by the end of the settle time, whether or not the client
  saw its commit; each one that is not is reported with its id, the node that accepted it and
  what happened to that node (killed, restarted, wiped, partitioned: from the timeline);
* ``acked_commits_durable``: every transaction whose commit the client saw acknowledged by an
  honest node is on every honest node's chain, exactly once;
* ``commit_heights_match``: at the height that node reported;
* ``exactly_once``: no transaction executes twice on any honest chain. The rule is
  ``consensus.execution``'s: a repeat inside a batch re-issued by a later view is a no-op (the
  transaction counts at its first height); any other repeat is a violation;
* ``no_phantom_txs``: every transaction on a chain is one the client submitted;
* ``chains_agree``: at every height two honest chains both have, they hold the same block;
* ``chains_converged``: every honest chain has the same head;
* ``chains_verify``: each served chain verifies offline (``node.ledger.verify_chain``: hash
  links, Merkle roots, transaction signatures, commit certificates), block JSON parsed strictly.

The checks are pure functions over records and chains, so they are unit tested on hand-made
histories, including ones that must fail.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from consensus.execution import RepeatCheck
from node.ledger import (
    Block,
    BlockJsonError,
    ChainReport,
    ClientRegistry,
    block_from_json,
    certificate_view,
    verify_chain,
)
from scripts.client import NO_RETRY, NodeClient, NodeError

MAX_EXAMPLES: Final = 20
"""Violations quoted per check (the count is always exact)."""
BLOCKS_PAGE: Final = 100
MAX_CHAIN_BLOCKS: Final = 1_000_000
"""Refuse to fetch longer chains than this from one node (bounds memory and time)."""
FETCH_TIMEOUT_S: Final = 10.0
MAX_PAGE_BYTES: Final = 256 * 1024 * 1024
MAX_UNCOMMITTED_LISTED: Final = 1000
"""Accepted-but-uncommitted transactions listed one by one in a report (the count is exact)."""


@dataclass(frozen=True, slots=True)
class TxRecord:
    """What the client saw of one transaction; times are seconds since the run started."""

    tx_id: str
    submit_s: float
    node: int | None
    """The node that accepted it (None if no node did)."""
    ack_s: float | None
    """When a node answered 202 (accepted)."""
    error: str | None
    """Why no node accepted it, if none did."""
    commit_s: float | None = None
    """When the client saw it committed (None: never, within the run)."""
    commit_node: int | None = None
    commit_height: int | None = None

    @property
    def acked(self) -> bool:
        return self.ack_s is not None

    @property
    def committed(self) -> bool:
        return self.commit_s is not None


@dataclass(frozen=True, slots=True)
class BlockSummary:
    height: int
    block_hash: str
    tx_ids: tuple[str, ...]
    batch_view: int = 0
    """The view that proposed the batch."""
    certificate_view: int = 0
    """The view of its commit certificate: later than ``batch_view`` for a re-issued batch."""


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    ok: bool
    detail: str
    violations: tuple[str, ...] = ()
    """Up to MAX_EXAMPLES examples; ``detail`` gives the count."""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "detail": self.detail,
            "violations": list(self.violations),
        }


def make_result(name: str, problems: Sequence[str], ok_detail: str) -> CheckResult:
    if not problems:
        return CheckResult(name, True, ok_detail)
    return CheckResult(name, False, f"{len(problems)} violation(s)", tuple(problems[:MAX_EXAMPLES]))


# ---------------------------------------------------------------------------------------------
# history checks


def check_history(
    records: Sequence[TxRecord], chains: Mapping[int, Sequence[BlockSummary]]
) -> list[CheckResult]:
    """Checks of the client's history against the honest nodes' chains (``chains``: node ->
    blocks in height order; only honest nodes). Commits the client saw from a node outside
    ``chains`` (a byzantine node) prove nothing and are not held against the cluster."""
    where = {node: _executed_at(blocks) for node, blocks in chains.items()}
    seen_commits = [r for r in records if r.committed and r.commit_node in chains]
    return [
        _durable(seen_commits, where),
        _heights_match(seen_commits, where),
        _exactly_once(where),
        _no_phantoms(records, where),
    ]


@dataclass(frozen=True, slots=True)
class Uncommitted:
    """A transaction an honest node accepted (202) that is not on every honest chain once."""

    tx_id: str
    node: int
    """The node that accepted it."""
    ack_s: float
    where: str
    """Where it is missing, or repeated."""
    fate: str
    """What happened to the accepting node during the run ("no fault" if nothing)."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def uncommitted(
    records: Sequence[TxRecord],
    chains: Mapping[int, Sequence[BlockSummary]],
    fates: Mapping[int, Sequence[str]],
) -> list[Uncommitted]:
    """Every transaction an honest node accepted with 202 that is not exactly once on every
    honest chain (``chains`` holds only honest nodes; a 202 from a node left out of them, a
    byzantine one, promises nothing). ``fates``: node -> what the timeline did to it."""
    where = {node: _executed_at(blocks) for node, blocks in chains.items()}
    out = []
    for r in records:
        if r.ack_s is None or r.node is None or r.node not in chains:
            continue
        wrong = []
        for node, index in sorted(where.items()):
            heights = index.get(r.tx_id, [])
            if len(heights) != 1:
                wrong.append(f"node {node}: " + ("missing" if not heights else f"at {heights}"))
        if wrong:
            fate = "; ".join(fates.get(r.node, ())) or "no fault"
            out.append(Uncommitted(r.tx_id, r.node, r.ack_s, ", ".join(wrong), fate))
    return out


def check_accepted(
    records: Sequence[TxRecord],
    chains: Mapping[int, Sequence[BlockSummary]],
    fates: Mapping[int, Sequence[str]],
) -> tuple[CheckResult, list[Uncommitted]]:
    """``accepted_committed``: the check and the transactions that fail it."""
    lost = uncommitted(records, chains, fates)
    accepted = sum(1 for r in records if r.ack_s is not None and r.node in chains)
    if not lost:
        detail = f"all {accepted} transactions accepted by honest nodes are on every honest chain"
        return CheckResult("accepted_committed", True, detail), lost
    by_node = Counter(u.node for u in lost)
    summary = "; ".join(
        f"{count} accepted by node {node} ({'; '.join(fates.get(node, ())) or 'no fault'})"
        for node, count in sorted(by_node.items())
    )
    examples = tuple(
        f"tx {u.tx_id} accepted by node {u.node} at t={u.ack_s:.2f}s: {u.where} "
        f"(node {u.node}: {u.fate})"
        for u in lost[:MAX_EXAMPLES]
    )
    detail = f"{len(lost)} of {accepted} accepted transactions not committed once: {summary}"
    return CheckResult("accepted_committed", False, detail, examples), lost


def _executed_at(blocks: Sequence[BlockSummary]) -> dict[str, list[int]]:
    """tx id -> the heights where the chain executes it: its first height, and the height of
    every repeat the rule forbids; a legitimate repeat (a re-issued batch) is a no-op."""
    index: dict[str, list[int]] = defaultdict(list)
    check = RepeatCheck[str]()
    last = 0
    for b in blocks:
        if b.height <= last:
            continue  # out of order: the chain fails chains_verify; judge the rest in order
        last = b.height
        verdict = check.observe(b.height, b.batch_view, b.certificate_view, b.tx_ids)
        forbidden = {v.tx_id for v in verdict.violations}
        for tx in b.tx_ids:
            if check.first_seq(tx) == b.height or tx in forbidden:
                index[tx].append(b.height)
    return index


def _durable(seen: Sequence[TxRecord], where: Mapping[int, Mapping[str, list[int]]]) -> CheckResult:
    problems = []
    for r in seen:
        for node, index in sorted(where.items()):
            heights = index.get(r.tx_id, [])
            if len(heights) != 1:
                state = "missing" if not heights else f"at heights {heights}"
                problems.append(
                    f"tx {r.tx_id[:16]} (commit seen at node {r.commit_node}, "
                    f"height {r.commit_height}, t={r.commit_s:.1f}s) is {state} on node {node}"
                )
    detail = f"{len(seen)} acknowledged commits on all {len(where)} honest chains"
    return make_result("acked_commits_durable", problems, detail)


def _heights_match(
    seen: Sequence[TxRecord], where: Mapping[int, Mapping[str, list[int]]]
) -> CheckResult:
    problems = []
    for r in seen:
        assert r.commit_node is not None
        heights = where[r.commit_node].get(r.tx_id, [])
        if r.commit_height is not None and heights and r.commit_height not in heights:
            problems.append(
                f"tx {r.tx_id[:16]}: node {r.commit_node} reported height {r.commit_height}, "
                f"its chain has it at {heights}"
            )
    return make_result("commit_heights_match", problems, f"{len(seen)} reported heights match")


def _exactly_once(where: Mapping[int, Mapping[str, list[int]]]) -> CheckResult:
    problems = [
        f"tx {tx[:16]} appears {len(heights)} times on node {node} (heights {heights})"
        for node, index in sorted(where.items())
        for tx, heights in index.items()
        if len(heights) > 1
    ]
    return make_result("exactly_once", problems, "no transaction committed twice")


def _no_phantoms(
    records: Sequence[TxRecord], where: Mapping[int, Mapping[str, list[int]]]
) -> CheckResult:
    submitted = {r.tx_id for r in records}
    problems = [
        f"tx {tx[:16]} on node {node} at height {heights[0]} was never submitted"
        for node, index in sorted(where.items())
        for tx, heights in index.items()
        if tx not in submitted
    ]
    return make_result("no_phantom_txs", problems, "every committed transaction was submitted")


def check_chains_agree(chains: Mapping[int, Sequence[BlockSummary]]) -> list[CheckResult]:
    """Safety (same block at every common height) and convergence (same head everywhere)."""
    by_height: dict[int, dict[int, str]] = defaultdict(dict)
    for node, blocks in chains.items():
        for b in blocks:
            by_height[b.height][node] = b.block_hash
    problems = []
    for height in sorted(by_height):
        hashes = by_height[height]
        if len(set(hashes.values())) > 1:
            listing = ", ".join(f"node {n}: {h[:16]}" for n, h in sorted(hashes.items()))
            problems.append(f"height {height}: {listing}")
    agree = make_result("chains_agree", problems, f"{len(by_height)} heights agree")
    heads = {
        node: (len(blocks), blocks[-1].block_hash if blocks else "")
        for node, blocks in chains.items()
    }
    distinct = set(heads.values())
    if len(distinct) <= 1:
        height = next(iter(distinct))[0] if distinct else 0
        converged = CheckResult("chains_converged", True, f"all at height {height}")
    else:
        listing = ", ".join(f"node {n}: height {h}" for n, (h, _) in sorted(heads.items()))
        converged = CheckResult("chains_converged", False, f"heads differ: {listing}")
    return [agree, converged]


def history_stats(
    records: Sequence[TxRecord], chains: Mapping[int, Sequence[BlockSummary]]
) -> dict[str, int]:
    """Counts for the report; 'indeterminate' txs (accepted, commit never seen) are allowed
    either way, and we say how many of them did make it."""
    on_chain: set[str] = set()
    for blocks in chains.values():
        for b in blocks:
            on_chain.update(b.tx_ids)
    acked = [r for r in records if r.acked]
    unseen = [r for r in acked if not r.committed]
    return {
        "submitted": len(records),
        "accepted": len(acked),
        "rejected_or_failed": len(records) - len(acked),
        "commit_observed": sum(1 for r in records if r.committed),
        "indeterminate": len(unseen),
        "indeterminate_on_chain": sum(1 for r in unseen if r.tx_id in on_chain),
        "not_accepted_but_on_chain": sum(1 for r in records if not r.acked and r.tx_id in on_chain),
    }


# ---------------------------------------------------------------------------------------------
# served chains: parsing and verification


def summarize(blocks: Iterable[Block]) -> list[BlockSummary]:
    return [
        BlockSummary(
            b.height,
            b.block_hash.hex(),
            tuple(t.hex() for t in b.tx_ids),
            batch_view=b.view,
            certificate_view=certificate_view(b),
        )
        for b in blocks
    ]


def verify_served_chain(
    docs: Sequence[object], consortium: Sequence[bytes], registry: ClientRegistry
) -> tuple[list[Block], ChainReport | str]:
    """Parse and verify a served chain: (the blocks that parsed, the report or why parsing
    stopped)."""
    blocks: list[Block] = []
    for i, doc in enumerate(docs):
        try:
            blocks.append(block_from_json(doc))
        except BlockJsonError as e:
            return blocks, f"block {i + 1}: {e}"
    return blocks, verify_chain(blocks, consortium, registry)


async def fetch_chain(
    nodes: NodeClient, url: str, *, timeout_s: float = FETCH_TIMEOUT_S
) -> list[dict[str, Any]]:
    """Every block the node at ``url`` serves, with payloads (GET /blocks?from=&limit=&payload=1
    pages), over the connection pool of ``nodes``.

    Raises ``ChainFetchError`` naming the node's URL on any failure."""
    client = nodes.at(url, retry=NO_RETRY, timeout_s=timeout_s, max_body_bytes=MAX_PAGE_BYTES)
    out: list[dict[str, Any]] = []
    start = 1
    while True:
        try:
            page = await client.blocks(start, BLOCKS_PAGE, payload=True)
        except NodeError as e:
            raise ChainFetchError(f"{url}: cannot fetch blocks from {start}: {e}") from e
        out.extend(page.blocks)
        if page.next is None or not page.blocks:
            return out
        if page.next <= start or len(out) > MAX_CHAIN_BLOCKS:
            raise ChainFetchError(
                f"{url}: GET /blocks paging went wrong at {start} (next={page.next})"
            )
        start = page.next


class ChainFetchError(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------------
# persistence (the history is kept beside the report for post-mortems)


def write_history(path: Path, records: Iterable[TxRecord]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(dataclasses.asdict(r), separators=(",", ":")) + "\n")


def read_history(path: Path) -> list[TxRecord]:
    fields = {f.name for f in dataclasses.fields(TxRecord)}
    out = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            doc = json.loads(line)
            if not isinstance(doc, dict) or set(doc) != fields:
                raise ValueError(f"{path}:{lineno}: not a history record")
            out.append(TxRecord(**doc))
    return out


def latency_percentiles(values: Sequence[float]) -> dict[str, float | int | None]:
    """p50/p90/p99/max of ``values`` (nearest-rank), plus the count."""
    if not values:
        return {"count": 0, "p50": None, "p90": None, "p99": None, "max": None}
    s = sorted(values)

    def rank(p: float) -> float:
        return s[min(len(s) - 1, max(0, int(-(-p * len(s) // 100)) - 1))]

    return {
        "count": len(s),
        "p50": round(rank(50), 2),
        "p90": round(rank(90), 2),
        "p99": round(rank(99), 2),
        "max": round(s[-1], 2),
    }


def per_second(times: Iterable[float], horizon_s: float) -> list[int]:
    """Counts of ``times`` in each whole second of [0, horizon_s)."""
    buckets = [0] * max(1, int(horizon_s) + 1)
    for t in times:
        if 0 <= t < len(buckets):
            buckets[int(t)] += 1
    return buckets


def count_by(values: Iterable[Any]) -> dict[str, int]:
    return {str(k): v for k, v in sorted(Counter(values).items(), key=lambda kv: str(kv[0]))}
