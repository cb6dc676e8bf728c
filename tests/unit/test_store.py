from __future__ import annotations

import dataclasses
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from consensus import checkpoints, viewchange
from consensus.hashing import GENESIS_HASH
from consensus.messages import (
    Checkpoint,
    Commit,
    FetchRequest,
    Message,
    NewView,
    Prepare,
    PrePrepare,
    Request,
    ViewChange,
)
from node.codec import encode_message
from node.ledger import LedgerApp, block_from_committed, encode_block, verify_chain
from node.store import (
    MAX_BLOCKS_PER_QUERY,
    CorruptBlockError,
    Store,
    StoreError,
)
from tests.unit.helpers_ledger import (
    CONSORTIUM,
    REGISTRY,
    make_batch,
    make_chain,
    make_committed,
    make_tx,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
D = bytes(range(32))
S = bytes(64)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "node.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    s = Store(db_path)
    try:
        yield s
    finally:
        s.close()


# -- chain --------------------------------------------------------------------------------------


def test_empty_store(store: Store) -> None:
    assert store.head() == (0, GENESIS_HASH)
    assert store.get_block(1) is None and store.get_block_raw(1) is None
    assert store.get_blocks(1, 10) == []
    assert store.tx_height(bytes(32)) is None and not store.is_committed(bytes(32))


def test_wal_mode(store: Store, db_path: Path) -> None:
    with sqlite3.connect(db_path) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_append_and_read(store: Store) -> None:
    chain = make_chain(5, null_every=4)
    store.append_blocks(chain[:2])
    store.append_blocks(chain[2:])
    assert store.head() == (5, chain[-1].block_hash)
    assert store.get_block(3) == chain[2]
    assert store.get_block_raw(3) == encode_block(chain[2])
    assert store.get_blocks(2, 2) == chain[1:3]
    assert store.get_blocks(4, 100) == chain[3:]
    assert list(store.iter_blocks()) == chain
    for block in chain:
        for i, env in enumerate(block.txs):
            assert store.tx_height(env.tx_id) == block.height
            assert store.tx_location(env.tx_id) == (block.height, i)
            assert store.is_committed(env.tx_id)
    assert store.tx_count() == sum(len(b.txs) for b in chain)
    store.append_blocks([])  # no-op
    assert store.head()[0] == 5


def test_get_blocks_limits(store: Store) -> None:
    with pytest.raises(ValueError, match="limit"):
        store.get_blocks(1, 0)
    store.append_blocks(make_chain(3, txs_per_block=0))
    assert len(store.get_blocks_raw(1, MAX_BLOCKS_PER_QUERY * 10)) == 3


def test_restart_keeps_chain(db_path: Path) -> None:
    chain = make_chain(4)
    with Store(db_path) as s:
        s.append_blocks(chain)
    with Store(db_path) as s:
        assert s.head() == (4, chain[-1].block_hash)
        assert list(s.iter_blocks()) == chain
        report = verify_chain(s.iter_blocks(), CONSORTIUM, REGISTRY)
        assert report.ok and report.height == 4
        assert s.is_committed(chain[2].txs[0].tx_id)


def test_contiguity_errors(store: Store) -> None:
    chain = make_chain(4)
    with pytest.raises(StoreError, match="expected block at height 1, got 2"):
        store.append_blocks([chain[1]])
    store.append_blocks(chain[:2])
    with pytest.raises(StoreError, match="expected block at height 3, got 4"):
        store.append_blocks([chain[3]])
    with pytest.raises(StoreError, match="expected block at height 3, got 2"):
        store.append_blocks([chain[1]])
    with pytest.raises(StoreError, match="expected block at height 4, got 3"):
        store.append_blocks([chain[2], chain[2]])
    other = block_from_committed(make_committed(3, bytes(32), [make_tx(500)]))
    with pytest.raises(StoreError, match="does not link"):
        store.append_blocks([other])
    with pytest.raises(StoreError, match="hash does not match"):
        store.append_blocks([dataclasses.replace(chain[2], timestamp_ms=1)])
    assert store.head() == (2, chain[1].block_hash)  # nothing partial was written
    store.append_blocks(chain[2:])
    assert store.head() == (4, chain[3].block_hash)


def test_a_bad_block_rolls_back_the_whole_append(store: Store, db_path: Path) -> None:
    chain = make_chain(1)
    store.append_blocks(chain)
    ok = block_from_committed(make_committed(2, chain[0].block_hash, [make_tx(600)]))
    unlinked = block_from_committed(make_committed(3, chain[0].block_hash, [make_tx(601)]))
    with pytest.raises(StoreError):
        store.append_blocks([ok, unlinked])
    assert store.head() == (1, chain[0].block_hash)
    assert store.get_block(2) is None and not store.is_committed(ok.txs[0].tx_id)
    store.append_blocks([ok])
    with Store(db_path) as again:
        assert again.head() == (2, ok.block_hash)


def test_a_repeated_tx_stays_indexed_at_its_first_height(store: Store) -> None:
    chain = make_chain(1)
    store.append_blocks(chain)
    first = chain[0].txs[0]
    replay = block_from_committed(make_committed(2, chain[0].block_hash, [first]))
    store.append_blocks([replay])
    assert store.head()[0] == 2 and store.tx_height(first.tx_id) == 1


def test_ledger_app_over_store(store: Store) -> None:
    chain = make_chain(1)
    app = LedgerApp(store, REGISTRY)
    tx_id = chain[0].txs[0].tx_id
    assert not app.committed_among([tx_id])
    store.append_blocks(chain)
    assert app.committed_among([tx_id]) == {tx_id}


# -- corruption and repair ----------------------------------------------------------------------


def _corrupt(db_path: Path, height: int, data: bytes) -> None:
    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE blocks SET data = ? WHERE height = ?", (data, height))


def test_corrupt_block_is_reported(store: Store, db_path: Path) -> None:
    chain = make_chain(3)
    store.append_blocks(chain)
    raw = bytearray(encode_block(chain[1]))
    raw[0] ^= 0xFF
    _corrupt(db_path, 2, bytes(raw))
    with pytest.raises(CorruptBlockError, match="block 2 is corrupt") as info:
        store.get_block(2)
    assert info.value.height == 2
    assert store.get_block_raw(2) == bytes(raw)  # the raw bytes stay readable for audit
    _corrupt(db_path, 2, encode_block(chain[2]))  # a valid block, stored at the wrong height
    with pytest.raises(CorruptBlockError, match="says 3"):
        store.get_block(2)


def test_replace_block_repairs_and_quarantines(store: Store, db_path: Path) -> None:
    chain = make_chain(3)
    store.append_blocks(chain)
    # A tampered copy (payload changed) that still decodes: quarantined on repair.
    victim = chain[1]
    tampered = dataclasses.replace(
        victim, txs=(dataclasses.replace(victim.txs[0], payload=b"evil"), victim.txs[1])
    )
    _corrupt(db_path, 2, encode_block(tampered))
    assert not verify_chain(store.iter_blocks(), CONSORTIUM, REGISTRY).ok
    store.replace_block(2, victim, reason="payload hash mismatch")
    assert store.get_block(2) == victim
    assert verify_chain(store.iter_blocks(), CONSORTIUM, REGISTRY).ok
    assert store.quarantined() == [(2, "payload hash mismatch", encode_block(tampered))]
    for i, env in enumerate(victim.txs):
        assert store.tx_location(env.tx_id) == (2, i)


def test_replace_block_keeps_the_tx_index_consistent(store: Store, db_path: Path) -> None:
    chain = make_chain(2)
    store.append_blocks(chain)
    # Simulate a corrupted index row pointing a tx of block 2 elsewhere, and a stray row.
    with sqlite3.connect(db_path) as db:
        db.execute("DELETE FROM txs WHERE height = 2")
        db.execute("INSERT INTO txs VALUES (?, 2, 9)", (bytes(32),))
    store.replace_block(2, chain[1])
    assert not store.is_committed(bytes(32))
    assert [store.tx_location(e.tx_id) for e in chain[1].txs] == [(2, 0), (2, 1)]


def test_replace_block_refuses_blocks_that_do_not_fit(store: Store) -> None:
    chain = make_chain(3)
    store.append_blocks(chain)
    with pytest.raises(StoreError, match="not 2"):
        store.replace_block(2, chain[2])
    with pytest.raises(StoreError, match="no block 4"):
        store.replace_block(4, dataclasses.replace(chain[2], height=4))
    fork = block_from_committed(make_committed(2, chain[0].block_hash, [make_tx(700)]))
    with pytest.raises(StoreError, match="does not link to the chain after it"):
        store.replace_block(2, fork)
    head_fork = block_from_committed(make_committed(3, chain[1].block_hash, [make_tx(701)]))
    with pytest.raises(StoreError, match="does not link to the chain after it"):
        store.replace_block(3, head_fork)
    assert store.quarantined() == []
    assert store.get_blocks(1, 10) == chain


def test_replace_block_refuses_a_tx_indexed_at_another_height(store: Store, db_path: Path) -> None:
    chain = make_chain(2)
    store.append_blocks(chain)
    moved = chain[1].txs[0].tx_id
    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE txs SET height = 1 WHERE tx_id = ?", (moved,))
    with pytest.raises(StoreError, match="already committed"):
        store.replace_block(2, chain[1])
    assert store.quarantined() == []  # refused whole
    assert store.tx_height(moved) == 1


# -- consensus messages -------------------------------------------------------------------------


def _pp(view: int, seq: int) -> PrePrepare:
    batch = make_batch([make_tx(seq)])
    return PrePrepare(
        view=view, seq=seq, digest=batch.digest(), replica=0, batch=batch, signature=S
    )


def _prep(seq: int, replica: int = 1) -> Prepare:
    return Prepare(view=0, seq=seq, digest=D, replica=replica, signature=S)


def _commit(seq: int, replica: int = 1) -> Commit:
    return Commit(view=0, seq=seq, digest=D, replica=replica, signature=S)


def _cp(seq: int, replica: int = 1) -> Checkpoint:
    return Checkpoint(seq=seq, state_digest=D, replica=replica, signature=S)


def _vc(new_view: int, stable_seq: int = 0) -> ViewChange:
    return ViewChange(
        new_view=new_view,
        stable_seq=stable_seq,
        stable_digest=D,
        checkpoint_proof=(),
        prepared=(),
        replica=1,
        signature=S,
    )


def _nv(view: int) -> NewView:
    return NewView(
        view=view, view_changes=(_vc(view),), pre_prepares=(), replica=view % 4, signature=S
    )


def test_messages_survive_restart(db_path: Path) -> None:
    msgs: list[Message] = [_pp(0, 1), _prep(1), _commit(1), _cp(32), _vc(1), _nv(1)]
    with Store(db_path) as s:
        s.save_messages(msgs[:3])
        s.save_messages(msgs[3:])
        s.save_messages([])
    with Store(db_path) as s:
        assert s.load_messages() == msgs


def test_saving_twice_is_idempotent(store: Store) -> None:
    store.save_messages([_prep(1), _prep(1)])
    store.save_messages([_prep(1), _commit(1)])
    assert store.load_messages() == [_prep(1), _commit(1)]
    assert store.message_count() == 2


def test_messages_are_stored_as_the_frames_handed_in(store: Store) -> None:
    msgs: list[Message] = [_pp(0, 1), _prep(1)]
    frames = [encode_message(m) for m in msgs]
    store.save_messages(msgs, frames)
    store.save_messages(msgs)  # the same bytes: nothing new
    assert store.load_messages() == msgs and store.message_count() == 2
    with pytest.raises(ValueError, match="2 messages but 1 frames"):
        store.save_messages(msgs, frames[:1])


def test_only_consensus_messages_are_persisted(store: Store) -> None:
    for msg in (
        Request(tx_ids=(), txs=(), replica=0),
        FetchRequest(from_seq=1, to_seq=2, replica=0),
    ):
        with pytest.raises(StoreError, match="not a persistable"):
            store.save_messages([_prep(1), msg])
    assert store.load_messages() == []  # the batch was refused whole


def test_retention_at_a_stable_checkpoint(store: Store) -> None:
    keep_view: list[Message] = [_vc(1, stable_seq=0), _nv(1)]
    store.save_messages(
        [
            _pp(0, 31), _prep(31), _commit(31), _cp(31),
            _pp(0, 32), _prep(32), _commit(32), _cp(32, 0), _cp(32, 1), _cp(32, 2),
            _pp(0, 33), _prep(33), _commit(33), _cp(64),
            *keep_view,
        ]
    )  # fmt: skip
    store.retain(checkpoints.retention(32))
    assert store.load_messages() == [
        _cp(32, 0), _cp(32, 1), _cp(32, 2),
        _pp(0, 33), _prep(33), _commit(33), _cp(64),
        *keep_view,
    ]  # fmt: skip


def test_retention_after_a_view_change(store: Store) -> None:
    store.save_messages([_vc(1), _nv(1), _vc(2), _nv(2), _prep(5)])
    store.retain(viewchange.retention(2))
    assert store.load_messages() == [_vc(2), _nv(2), _prep(5)]


def test_corrupt_persisted_message_refuses_to_load(store: Store, db_path: Path) -> None:
    store.save_messages([_prep(1)])
    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE consensus_messages SET data = ?", (encode_message(_prep(1))[:-1],))
    with pytest.raises(StoreError, match="persisted prepare message #1 is corrupt"):
        store.load_messages()


_CRASH_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from consensus.messages import Prepare
    from node.store import Store

    store = Store(sys.argv[1])
    store.save_messages([Prepare(view=0, seq=i, digest=bytes(32), replica=1, signature=bytes(64))
                         for i in range(1, 11)])
    store.set_meta("view", "7")
    sys.stdout.write("saved\\n")
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # die without closing anything
    """
)


def test_messages_are_durable_when_save_returns(db_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _CRASH_SCRIPT, str(db_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert proc.stdout == "saved\n"
    with Store(db_path) as s:
        assert [m.seq for m in s.load_messages()] == list(range(1, 11))  # type: ignore[union-attr]
        assert s.get_meta("view") == "7"


# -- meta and schema ----------------------------------------------------------------------------


def test_meta(db_path: Path) -> None:
    with Store(db_path) as s:
        assert s.get_meta("k") is None
        s.set_meta("k", "1")
        s.set_meta("k", "2")
    with Store(db_path) as s:
        assert s.get_meta("k") == "2"
        assert s.get_meta("schema_version") == "1"


def test_schema_version_mismatch_is_refused(db_path: Path) -> None:
    with Store(db_path) as s:
        s.set_meta("schema_version", "999")
    with pytest.raises(StoreError, match="schema version 999"):
        Store(db_path)


def test_bad_synchronous_setting(db_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        Store(db_path, synchronous="OFF")
    with Store(db_path, synchronous="FULL") as s:
        s.append_blocks(make_chain(1))
        assert s.head()[0] == 1


def test_pending_transactions_survive_reopen_and_leave_once_committed(db_path: Path) -> None:
    chain = make_chain(1)
    on_chain = chain[0].txs[0]
    extra = b"\x07" * 32
    with Store(db_path) as s:
        s.save_pending([on_chain.tx_id, extra], [b"a", b"b"])
        s.save_pending([extra], [b"b"])  # idempotent
    with Store(db_path) as s:
        assert sorted(s.load_pending(10)) == sorted([(on_chain.tx_id, b"a"), (extra, b"b")])
        s.append_blocks(chain)
        assert s.load_pending(10) == [(extra, b"b")]
        s.delete_pending([extra])
        assert s.load_pending(10) == []


def test_committed_among_answers_for_a_whole_batch(store: Store) -> None:
    chain = make_chain(3)
    store.append_blocks(chain)
    on_chain = [env.tx_id for b in chain for env in b.txs]
    strangers = [i.to_bytes(32, "big") for i in range(1, 700)]  # more than one query's worth
    assert store.committed_among(strangers + on_chain) == set(on_chain)
    assert store.committed_among([]) == set()


# -- one transaction per consensus round -----------------------------------------------------


def test_a_round_commits_its_writes_once_and_fsyncs_only_when_durable(db_path: Path) -> None:
    voted: list[int] = []
    s = Store(db_path, on_first_vote=lambda: voted.append(1))
    commits: list[float] = []
    s.on_write = lambda total_s, commit_s: commits.append(commit_s)
    chain = make_chain(2)
    try:
        with s.round(durable=True):
            assert s._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
            s.save_messages([_prep(1)])
            s.append_blocks(chain[:1])
            s.retain(checkpoints.retention(0))
            assert not voted  # the voted marker follows the COMMIT, not the insert
        assert len(commits) == 1 and voted == [1]
        assert s._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # back to NORMAL
        with s.round(durable=False):
            s.append_blocks(chain[1:])
        assert len(commits) == 2 and s.head() == (2, chain[1].block_hash)
        with pytest.raises(RuntimeError, match="durable"), s.round(durable=False):
            s.save_messages([_prep(2)])
    finally:
        s.close()
    with Store(db_path) as again:
        assert again.load_messages() == [_prep(1)] and again.head()[0] == 2


def test_a_failed_round_rolls_back_every_write_in_it(store: Store, db_path: Path) -> None:
    chain = make_chain(1)
    unlinked = block_from_committed(make_committed(3, chain[0].block_hash, [make_tx(602)]))
    with pytest.raises(StoreError), store.round(durable=True):
        store.save_messages([_prep(1)])
        store.append_blocks(chain)
        store.append_blocks([unlinked])
    assert store.head() == (0, GENESIS_HASH) and store.get_block(1) is None
    assert store.load_messages() == []
    with (
        pytest.raises(RuntimeError, match="nest"),
        store.round(durable=False),
        store.round(durable=False),
    ):
        pass
    store.append_blocks(chain)  # the store is usable after both
    assert store.head() == (1, chain[0].block_hash)
