"""Safety and liveness invariants, checked incrementally as the simulation runs.

Safety is checked on every block an honest node commits (which happens inside the delivery of a
message or a timer), so a violation stops the run at the first event that breaks it:
  * agreement: no two honest nodes commit different block hashes at the same height;
  * every committed block carries a valid commit certificate: a quorum of distinct replicas,
    valid signatures over ``Commit.signing_bytes()``, one view, and the block's seq and digest;
  * each honest chain links (seq, prev hash, block hash) and holds only valid transactions,
    each executed at most once (``consensus.execution.RepeatCheck``: a transaction may repeat
    only in a re-issued batch, as a counted no-op).
Each check costs O(size of the block), never O(history) or O(nodes).

Liveness is checked once faults have healed: every transaction a client submitted must end up on
every honest chain.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from consensus.events import Committed
from consensus.execution import RepeatCheck
from consensus.hashing import GENESIS_HASH, chain_link
from consensus.messages import CertifiedBlock

Verify = Callable[[int, bytes, bytes], bool]
TxCheck = Callable[[tuple[bytes, ...], tuple[bytes, ...]], "str | None"]


@dataclass(frozen=True, slots=True)
class RunId:
    """What names a run well enough to replay it."""

    seed: int
    scenario: str
    n: int
    codec: bool = True

    def replay_command(self) -> str:
        cmd = f"python -m tests.sim.run --seed {self.seed} --scenario {self.scenario} --n {self.n}"
        return cmd if self.codec else cmd + " --no-codec"


class InvariantViolation(AssertionError):
    """An invariant broke. The message carries the seed, virtual time and a replay command."""

    def __init__(self, kind: str, detail: str, run: RunId, time_ms: int) -> None:
        self.kind = kind
        self.detail = detail
        self.run = run
        self.time_ms = time_ms
        super().__init__(
            f"[{kind}] {detail}\n  seed={run.seed} scenario={run.scenario} n={run.n} "
            f"t={time_ms}ms\n  replay: {run.replay_command()}"
        )


def certificate_problem(block: CertifiedBlock, n: int, quorum: int, verify: Verify) -> str | None:
    """Why ``block``'s commit certificate is invalid, or None if it is valid."""
    digest = block.batch.digest()
    signers: set[int] = set()
    views: set[int] = set()
    for c in block.commits:
        if c.seq != block.seq or c.digest != digest:
            return f"commit from {c.replica} is for seq {c.seq} digest {c.digest.hex()[:12]}"
        if not 0 <= c.replica < n:
            return f"commit signer {c.replica} is not a replica"
        if c.replica in signers:
            return f"replica {c.replica} signs the certificate twice"
        if not verify(c.replica, c.signing_bytes(), c.signature):
            return f"bad signature on the commit of replica {c.replica}"
        signers.add(c.replica)
        views.add(c.view)
    if len(views) > 1:
        return f"commits from different views {sorted(views)}"
    if len(signers) < quorum:
        return f"only {len(signers)} signers, quorum is {quorum}"
    return None


@dataclass(slots=True)
class _Chain:
    height: int = 0
    head: bytes = GENESIS_HASH
    executed: RepeatCheck[bytes] = field(default_factory=RepeatCheck)


class SafetyChecker:
    """Incremental agreement/certificate/chain checks over every honest node's commits."""

    def __init__(self, run: RunId, n: int, quorum: int, verify: Verify, tx_check: TxCheck):
        self._run = run
        self._n = n
        self._quorum = quorum
        self._verify = verify
        self._tx_check = tx_check
        self._decided: dict[int, tuple[bytes, str]] = {}
        self._chains: dict[str, _Chain] = {}
        self.blocks_checked = 0
        self.repeats = 0
        """Re-issued transactions seen again (no-ops), for reports."""

    def fail(self, kind: str, detail: str, time_ms: int) -> InvariantViolation:
        return InvariantViolation(kind, detail, self._run, time_ms)

    def height(self, node: str) -> int:
        chain = self._chains.get(node)
        return chain.height if chain else 0

    def on_commit(self, node: str, c: Committed, time_ms: int) -> None:
        """Check one block that honest ``node`` just committed; raise on the first problem."""
        chain = self._chains.setdefault(node, _Chain())
        block = c.block
        seq = block.seq
        where = f"{node} seq {seq}"
        if seq != chain.height + 1:
            raise self.fail("chain", f"{where}: expected height {chain.height + 1}", time_ms)
        if c.prev_hash != chain.head:
            raise self.fail("chain", f"{where}: prev_hash is not the previous head", time_ms)
        if c.block_hash != chain_link(seq, c.prev_hash, block.batch.digest()):
            raise self.fail("chain", f"{where}: block_hash is not chain_link(...)", time_ms)
        problem = certificate_problem(block, self._n, self._quorum, self._verify)
        if problem is not None:
            raise self.fail("certificate", f"{where}: {problem}", time_ms)
        batch = block.batch
        problem = self._tx_check(batch.tx_ids, batch.txs)
        if problem is not None:
            raise self.fail("invalid-tx", f"{where}: {problem}", time_ms)
        # A batch prepared in an old view may be re-issued by a later new-view after its
        # transactions committed elsewhere (PBFT section 4.4 must re-issue it): a counted no-op.
        # A fresh batch repeating a committed transaction is never certified by honest backups.
        cert_view = block.commits[0].view if block.commits else batch.view
        verdict = chain.executed.observe(seq, batch.view, cert_view, batch.tx_ids)
        if verdict.problem is not None:
            raise self.fail("double-commit", f"{where}: {verdict.problem}", time_ms)
        self.repeats += verdict.repeats
        decided = self._decided.get(seq)
        if decided is None:
            self._decided[seq] = (c.block_hash, node)
        elif decided[0] != c.block_hash:
            raise self.fail(
                "fork",
                f"{where}: block {c.block_hash.hex()[:12]} but {decided[1]} committed "
                f"{decided[0].hex()[:12]} at that height",
                time_ms,
            )
        chain.height = seq
        chain.head = c.block_hash
        self.blocks_checked += 1


class LivenessTracker:
    """Counts, for every transaction a client submitted, how many honest nodes committed it."""

    def __init__(self, honest_nodes: Sequence[str]) -> None:
        self._honest = len(honest_nodes)
        self._count: dict[bytes, int] = {}
        self.outstanding = 0

    def expect(self, tx_id: bytes) -> None:
        if tx_id not in self._count:
            self._count[tx_id] = 0
            self.outstanding += 1

    def on_honest_commit(self, tx_id: bytes) -> None:
        count = self._count.get(tx_id)
        if count is None:
            return  # not a client's transaction (a byzantine primary may invent valid ones)
        self._count[tx_id] = count + 1
        if count + 1 == self._honest:
            self.outstanding -= 1

    @property
    def expected(self) -> int:
        return len(self._count)

    def missing(self, limit: int = 5) -> list[tuple[str, int]]:
        """A few transactions not yet on every honest chain, with how many chains have them."""
        out = []
        for tx_id, count in self._count.items():
            if count < self._honest:
                out.append((tx_id.hex()[:12], count))
                if len(out) >= limit:
                    break
        return out
