"""One node's durable state in SQLite: the chain, its tx index, and consensus messages.

One connection, used from one thread (the node's event loop thread; sqlite3 enforces it). WAL
mode with ``synchronous=NORMAL``: a committed transaction survives the process being killed
(kill -9, crash) because it is in the WAL file when ``commit()`` returns; a power failure may
lose the last transactions. Pass ``synchronous="FULL"`` to survive that too, at an fsync per
transaction.

Every write is one SQL transaction, so a crash leaves either all of it or none: a batch of
blocks and their tx index rows, or a batch of persisted consensus messages.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Final

from consensus.events import Retention
from consensus.hashing import GENESIS_HASH, chain_link
from consensus.messages import (
    Checkpoint,
    Commit,
    Message,
    NewView,
    Prepare,
    PrePrepare,
    ViewChange,
)
from node.codec import CodecError, decode_message, encode_message
from node.ledger import Block, decode_block, encode_block

SCHEMA_VERSION: Final = "1"
_SYNC_MODES: Final = ("NORMAL", "FULL")
PRIVATE_FILE_MODE: Final = 0o600
PRIVATE_DIR_MODE: Final = 0o700
MAX_BLOCKS_PER_QUERY: Final = 1000
"""get_blocks / get_blocks_raw return at most this many blocks per call."""
MAX_PERSISTED_MESSAGES: Final = 1_000_000
"""load_messages refuses more than this: the log is truncated at every stable checkpoint, so a
table this large means truncation is broken, and loading it would exhaust memory."""

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS blocks (
    height    INTEGER PRIMARY KEY,
    hash      BLOB NOT NULL,
    prev_hash BLOB NOT NULL,
    data      BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS txs (
    tx_id  BLOB PRIMARY KEY,
    height INTEGER NOT NULL,
    idx    INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS txs_by_height ON txs(height);
CREATE TABLE IF NOT EXISTS consensus_messages (
    id      INTEGER PRIMARY KEY,
    kind    TEXT NOT NULL,
    view    INTEGER,
    seq     INTEGER,
    replica INTEGER NOT NULL,
    digest  BLOB NOT NULL UNIQUE,
    data    BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS consensus_messages_by_kind_seq ON consensus_messages(kind, seq);
CREATE TABLE IF NOT EXISTS quarantine (
    id             INTEGER PRIMARY KEY,
    height         INTEGER NOT NULL,
    replaced_at_ms INTEGER NOT NULL,
    reason         TEXT NOT NULL,
    data           BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS pending_txs (
    tx_id BLOB PRIMARY KEY,
    data  BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

_KINDS: Final[dict[type, str]] = {
    PrePrepare: "pre-prepare",
    Prepare: "prepare",
    Commit: "commit",
    Checkpoint: "checkpoint",
    ViewChange: "view-change",
    NewView: "new-view",
}


class StoreError(Exception):
    """A write would break the chain's invariants, or the database is unusable."""


class CorruptBlockError(StoreError):
    """A stored block no longer decodes (disk corruption or tampering); see replace_block."""

    def __init__(self, height: int, reason: str) -> None:
        super().__init__(f"block {height} is corrupt: {reason}")
        self.height = height
        self.reason = reason


def _columns(msg: Message) -> tuple[str, int | None, int | None, int]:
    """(kind, view, seq, replica) for the message table; view-change stores stable_seq as seq."""
    kind = _KINDS.get(type(msg))
    if kind is None:
        raise StoreError(f"{type(msg).__name__} is not a persistable consensus message")
    if isinstance(msg, PrePrepare | Prepare | Commit):
        return kind, msg.view, msg.seq, msg.replica
    if isinstance(msg, Checkpoint):
        return kind, None, msg.seq, msg.replica
    if isinstance(msg, ViewChange):
        return kind, msg.new_view, msg.stable_seq, msg.replica
    assert isinstance(msg, NewView)
    return kind, msg.view, None, msg.replica


class Store:
    """The node's SQLite database; see the module docstring for threading and durability."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "NORMAL",
        vote_log_sync: str = "FULL",
        on_first_vote: Callable[[], None] | None = None,
    ) -> None:
        if synchronous not in _SYNC_MODES or vote_log_sync not in _SYNC_MODES:
            raise ValueError("synchronous and vote_log_sync must be 'NORMAL' or 'FULL'")
        self.path = Path(path)
        self.on_write: Callable[[float, float], None] | None = None
        """Told the seconds of each write transaction and of its COMMIT (node metrics)."""
        self._sync = synchronous
        self._vote_sync = vote_log_sync
        self._on_first_vote = on_first_vote
        self._in_round = False
        self._round_durable = False
        self._voted_in_round = False
        create_private(self.path)
        # isolation_level=None: no implicit transactions; every write below opens its own with
        # BEGIN IMMEDIATE so it takes the write lock up front and commits or rolls back whole.
        self._db = sqlite3.connect(self.path, isolation_level=None)
        try:
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                # The durability argument above assumes WAL; refuse rather than run without it.
                raise StoreError(f"{self.path}: cannot enable WAL journal mode (got {mode})")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._init_schema()
            self._head = self._load_head()
            for suffix in ("-wal", "-shm"):
                _chmod_private(Path(f"{self.path}{suffix}"))
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise StoreError(f"{self.path}: not a usable database ({e})") from None
        except BaseException:
            self._db.close()
            raise

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _init_schema(self) -> None:
        with self._write():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                self._db.execute(
                    "INSERT INTO meta(key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,)
                )
            elif row[0] != SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: schema version {row[0]}, this build uses {SCHEMA_VERSION}"
                )

    @contextlib.contextmanager
    def round(self, *, durable: bool) -> Iterator[None]:
        """The writes of one consensus round as one SQL transaction: one COMMIT (and at most
        one fsync) where each write committed on its own, and all or nothing on an error.

        ``durable``: the round saves messages the replica is about to send, so the COMMIT runs
        with ``vote_log_sync`` (FULL fsyncs the WAL, which also makes every earlier NORMAL
        commit durable). Callers must not act on the writes (answer clients, send) before the
        block exits."""
        if self._in_round:
            raise RuntimeError("store rounds do not nest")
        sync = durable and self._vote_sync != self._sync
        if sync:
            self._db.execute(f"PRAGMA synchronous={self._vote_sync}")
        head = self._head
        try:
            with self._write():
                self._in_round, self._round_durable = True, durable
                try:
                    yield
                finally:
                    self._in_round = self._round_durable = False
        except BaseException:
            self._head = head  # the blocks appended in the round were rolled back with it
            raise
        finally:
            if sync:
                self._db.execute(f"PRAGMA synchronous={self._sync}")
            voted, self._voted_in_round = self._voted_in_round, False
        if voted:
            self._first_vote_written()

    @contextlib.contextmanager
    def _write(self) -> Iterator[None]:
        """One SQL transaction: committed whole on success, rolled back whole on any error.
        Inside :meth:`round`, a write joins the round's transaction instead."""
        if self._in_round:
            yield
            return
        began = time.perf_counter()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            committing = time.perf_counter()
            self._db.execute("COMMIT")
            if self.on_write is not None:
                done = time.perf_counter()
                self.on_write(done - began, done - committing)
        except BaseException:
            # Also after a failed COMMIT (disk full, I/O error): never leave a transaction open
            # for the next write to silently join.
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    # -- chain -------------------------------------------------------------------------------

    def _load_head(self) -> tuple[int, bytes]:
        row = self._db.execute(
            "SELECT height, hash FROM blocks ORDER BY height DESC LIMIT 1"
        ).fetchone()
        return (0, GENESIS_HASH) if row is None else (row[0], bytes(row[1]))

    def head(self) -> tuple[int, bytes]:
        """(height, hash) of the last block; (0, GENESIS_HASH) for an empty chain."""
        return self._head

    def append_blocks(self, blocks: Sequence[Block]) -> list[bytes]:
        """Append blocks to the chain in one transaction.

        The store checks the chain's shape (contiguous heights, each block linking to the one
        before, the hash matching the header), not certificates or signatures: callers append
        only blocks the core committed or that verify_block accepted. A transaction repeated in
        a later block stays indexed at its first height (see ledger.verify_chain).
        Returns the bytes written, one per block.
        """
        if not blocks:
            return []
        height, head = self._head
        rows: list[tuple[int, bytes, bytes, bytes]] = []
        tx_rows: list[tuple[bytes, int, int]] = []
        for block in blocks:
            _check_link(block, height + 1, head)
            rows.append((block.height, block.block_hash, block.prev_hash, encode_block(block)))
            tx_rows.extend((tx_id, block.height, i) for i, tx_id in enumerate(block.tx_ids))
            height, head = block.height, block.block_hash
        try:
            with self._write():
                self._db.executemany(
                    "INSERT INTO blocks(height, hash, prev_hash, data) VALUES (?, ?, ?, ?)", rows
                )
                self._db.executemany(
                    "INSERT OR IGNORE INTO txs(tx_id, height, idx) VALUES (?, ?, ?)", tx_rows
                )
        except sqlite3.IntegrityError as e:
            raise StoreError(f"cannot append blocks: {_integrity_reason(e)}") from None
        self._head = (height, head)
        return [row[3] for row in rows]

    def get_block_raw(self, height: int) -> bytes | None:
        row = self._db.execute("SELECT data FROM blocks WHERE height = ?", (height,)).fetchone()
        return None if row is None else bytes(row[0])

    def get_block(self, height: int) -> Block | None:
        """The block at ``height``; CorruptBlockError if its stored bytes no longer decode."""
        raw = self.get_block_raw(height)
        return None if raw is None else _decode_stored(height, raw)

    def get_blocks_raw(self, from_height: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` (at most MAX_BLOCKS_PER_QUERY) encoded blocks from ``from_height`` on."""
        if limit < 1:
            raise ValueError(f"limit must be positive, got {limit}")
        rows = self._db.execute(
            "SELECT height, data FROM blocks WHERE height >= ? ORDER BY height LIMIT ?",
            (from_height, min(limit, MAX_BLOCKS_PER_QUERY)),
        ).fetchall()
        return [(h, bytes(d)) for h, d in rows]

    def get_blocks(self, from_height: int, limit: int) -> list[Block]:
        return [_decode_stored(h, d) for h, d in self.get_blocks_raw(from_height, limit)]

    def iter_blocks(self, from_height: int = 1) -> Iterator[Block]:
        """Every block from ``from_height`` to the head, fetched in bounded pages."""
        next_height = from_height
        while True:
            page = self.get_blocks(next_height, MAX_BLOCKS_PER_QUERY)
            if not page:
                return
            yield from page
            next_height = page[-1].height + 1

    def tx_height(self, tx_id: bytes) -> int | None:
        row = self._db.execute("SELECT height FROM txs WHERE tx_id = ?", (tx_id,)).fetchone()
        return None if row is None else int(row[0])

    def tx_location(self, tx_id: bytes) -> tuple[int, int] | None:
        """(height, index in block) of a committed tx."""
        row = self._db.execute("SELECT height, idx FROM txs WHERE tx_id = ?", (tx_id,)).fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    def is_committed(self, tx_id: bytes) -> bool:
        return self.tx_height(tx_id) is not None

    def committed_among(self, tx_ids: Sequence[bytes]) -> set[bytes]:
        """Those of ``tx_ids`` on the chain: one indexed query per 500 ids, not one per id."""
        found: set[bytes] = set()
        ids = list(tx_ids)
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(f"SELECT tx_id FROM txs WHERE tx_id IN ({marks})", chunk)
            found.update(bytes(r[0]) for r in rows)
        return found

    def tx_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM txs").fetchone()[0])

    # -- repair (audit) ----------------------------------------------------------------------

    def replace_block(self, height: int, block: Block, *, reason: str = "repair") -> None:
        """Replace a stored block (corrupted on disk) with a verified copy, keeping the old
        bytes in the quarantine table for forensics.

        The replacement must fit the chain exactly where it goes: link to the stored hash at
        height-1 and be the block that height+1 links to (for the head: have the stored hash).
        Callers verify it (verify_block) first; the store checks only the chain's shape.
        """
        if block.height != height:
            raise StoreError(f"replacement is block {block.height}, not {height}")
        row = self._db.execute(
            "SELECT hash, data FROM blocks WHERE height = ?", (height,)
        ).fetchone()
        if row is None:
            raise StoreError(f"no block {height} to replace")
        stored_hash, old_data = bytes(row[0]), bytes(row[1])
        _check_link(block, height, self._hash_at(height - 1))
        nxt = self._db.execute(
            "SELECT prev_hash FROM blocks WHERE height = ?", (height + 1,)
        ).fetchone()
        expected = stored_hash if nxt is None else bytes(nxt[0])
        if block.block_hash != expected:
            raise StoreError(f"replacement for block {height} does not link to the chain after it")
        try:
            with self._write():
                self._db.execute(
                    "INSERT INTO quarantine(height, replaced_at_ms, reason, data) "
                    "VALUES (?, ?, ?, ?)",
                    (height, int(time.time() * 1000), reason, old_data),
                )
                self._db.execute("DELETE FROM txs WHERE height = ?", (height,))
                self._db.executemany(
                    "INSERT INTO txs(tx_id, height, idx) VALUES (?, ?, ?)",
                    [(tx_id, height, i) for i, tx_id in enumerate(block.tx_ids)],
                )
                self._db.execute(
                    "UPDATE blocks SET hash = ?, prev_hash = ?, data = ? WHERE height = ?",
                    (block.block_hash, block.prev_hash, encode_block(block), height),
                )
        except sqlite3.IntegrityError as e:
            raise StoreError(f"cannot replace block {height}: {_integrity_reason(e)}") from None
        if height == self._head[0]:
            self._head = (height, block.block_hash)

    def quarantined(self) -> list[tuple[int, str, bytes]]:
        """(height, reason, old bytes) of every block replaced, oldest first."""
        rows = self._db.execute(
            "SELECT height, reason, data FROM quarantine ORDER BY id"
        ).fetchall()
        return [(int(h), str(r), bytes(d)) for h, r, d in rows]

    def _hash_at(self, height: int) -> bytes:
        if height == 0:
            return GENESIS_HASH
        row = self._db.execute("SELECT hash FROM blocks WHERE height = ?", (height,)).fetchone()
        if row is None:
            raise StoreError(f"no block {height}")
        return bytes(row[0])

    # -- consensus messages ------------------------------------------------------------------

    def save_messages(self, msgs: Sequence[Message], frames: Sequence[bytes] | None = None) -> None:
        """Persist messages the replica must remember across a restart (one transaction,
        committed before return). Saving a message already stored is a no-op.

        ``frames``: each message's encoding when the caller has it (sent or received in the
        same round), stored as it is instead of encoding the message again; any frame that
        decodes to the message will do."""
        if not msgs:
            return
        if frames is not None and len(frames) != len(msgs):
            raise ValueError(f"{len(msgs)} messages but {len(frames)} frames")
        rows = []
        for i, msg in enumerate(msgs):
            kind, view, seq, replica = _columns(msg)
            data = encode_message(msg) if frames is None else frames[i]
            rows.append((kind, view, seq, replica, hashlib.sha256(data).digest(), data))
        if self._in_round:
            if not self._round_durable:
                raise RuntimeError("messages saved in a store round not opened durable=True")
            self._insert_messages(rows)
            self._voted_in_round = True
            return
        # What the replica signed must survive a power loss before it is sent: this commit
        # fsyncs the WAL (synchronous=FULL) even when the rest of the store runs NORMAL.
        durable = self._vote_sync != self._sync
        if durable:
            self._db.execute(f"PRAGMA synchronous={self._vote_sync}")
        try:
            with self._write():
                self._insert_messages(rows)
        finally:
            if durable:
                self._db.execute(f"PRAGMA synchronous={self._sync}")
        self._first_vote_written()

    def _insert_messages(
        self, rows: list[tuple[str, int | None, int | None, int, bytes, bytes]]
    ) -> None:
        self._db.executemany(
            "INSERT OR IGNORE INTO consensus_messages"
            "(kind, view, seq, replica, digest, data) VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )

    def _first_vote_written(self) -> None:
        if self._on_first_vote is not None:
            # After the commit, before anything is sent: the marker that this node voted
            # (node.storeguard), written once.
            first, self._on_first_vote = self._on_first_vote, None
            first()

    def load_messages(self) -> list[Message]:
        """Every persisted message, in the order saved. StoreError if one no longer decodes:
        a replica that cannot read what it signed must not run (it could contradict itself)."""
        count = int(self._db.execute("SELECT COUNT(*) FROM consensus_messages").fetchone()[0])
        if count > MAX_PERSISTED_MESSAGES:
            raise StoreError(
                f"{count} persisted consensus messages (limit {MAX_PERSISTED_MESSAGES}): "
                "the log is not being truncated"
            )
        out: list[Message] = []
        for row_id, kind, data in self._db.execute(
            "SELECT id, kind, data FROM consensus_messages ORDER BY id"
        ):
            try:
                out.append(decode_message(bytes(data)))
            except CodecError as e:
                raise StoreError(f"persisted {kind} message #{row_id} is corrupt: {e}") from None
        return out

    def message_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM consensus_messages").fetchone()[0])

    def retain(self, retention: Retention) -> None:
        """Carry out the core's retention instruction (one transaction): delete every persisted
        message one of its rules covers. The columns hold what ``Forget`` compares (a
        view-change's view is the one it votes for, its seq its stable checkpoint's); a NULL
        column never compares below a bound, as in ``Forget.covers``."""
        with self._write():
            for rule in retention.forget:
                kinds = sorted(_KINDS[kind] for kind in rule.kinds)
                where = [f"kind IN ({', '.join('?' * len(kinds))})"]
                args: list[object] = list(kinds)
                if rule.below_seq is not None:
                    where.append("seq < ?")
                    args.append(rule.below_seq)
                if rule.below_view is not None:
                    where.append("view < ?")
                    args.append(rule.below_view)
                sql = "DELETE FROM consensus_messages WHERE " + " AND ".join(where)
                self._db.execute(sql, args)

    # -- client transactions accepted but not yet committed -------------------------------------

    def save_pending(self, tx_ids: Sequence[bytes], txs: Sequence[bytes]) -> None:
        """Durably remember transactions this node acknowledged to a client (HTTP 202), so a
        crash before they commit loses none: the node re-submits them when it starts."""
        if not tx_ids:
            return
        with self._write():
            self._db.executemany(
                "INSERT OR IGNORE INTO pending_txs(tx_id, data) VALUES (?, ?)",
                zip(tx_ids, txs, strict=True),
            )

    def delete_pending(self, tx_ids: Sequence[bytes]) -> None:
        if not tx_ids:
            return
        with self._write():
            self._db.executemany("DELETE FROM pending_txs WHERE tx_id = ?", ((t,) for t in tx_ids))

    def get_pending(self, tx_ids: Sequence[bytes]) -> list[tuple[bytes, bytes]]:
        """(tx id, tx) of those of ``tx_ids`` in the pending table, in the order given."""
        found: dict[bytes, bytes] = {}
        for i in range(0, len(tx_ids), 500):
            chunk = list(tx_ids[i : i + 500])
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT tx_id, data FROM pending_txs WHERE tx_id IN ({marks})", chunk
            )
            found.update((bytes(a), bytes(b)) for a, b in rows)
        return [(t, found[t]) for t in tx_ids if t in found]

    def load_pending(self, limit: int) -> list[tuple[bytes, bytes]]:
        """Pending transactions not on the chain (committed ones are dropped on the way)."""
        rows = self._db.execute(
            "SELECT p.tx_id, p.data FROM pending_txs p "
            "WHERE NOT EXISTS (SELECT 1 FROM txs t WHERE t.tx_id = p.tx_id) LIMIT ?",
            (limit,),
        ).fetchall()
        return [(bytes(a), bytes(b)) for a, b in rows]

    # -- meta --------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._write():
            self._db.execute(
                "INSERT INTO meta(key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )


def create_private(path: Path) -> None:
    """Make ``path``'s directory 0700 and the file 0600 (created empty if missing) before
    SQLite opens it: SQLite gives the WAL and shm files the database file's mode."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    _chmod_private(path.parent, PRIVATE_DIR_MODE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), PRIVATE_FILE_MODE)
    os.close(fd)
    _chmod_private(path)


def _chmod_private(path: Path, mode: int = PRIVATE_FILE_MODE) -> None:
    """Tighten ``path`` to ``mode`` if it exists and we own it (a store from an older build)."""
    try:
        st = path.stat()
        if st.st_uid == os.getuid() and st.st_mode & 0o777 != mode:
            path.chmod(mode)
    except FileNotFoundError:
        pass


def _check_link(block: Block, height: int, prev_hash: bytes) -> None:
    if block.height != height:
        raise StoreError(f"expected block at height {height}, got {block.height}")
    if block.prev_hash != prev_hash:
        raise StoreError(f"block {block.height} does not link to block {height - 1}")
    if chain_link(block.height, block.prev_hash, block.digest) != block.block_hash:
        raise StoreError(f"block {block.height}: hash does not match its header")


def _decode_stored(height: int, raw: bytes) -> Block:
    try:
        block = decode_block(raw)
    except CodecError as e:
        raise CorruptBlockError(height, e.reason) from None
    if block.height != height:
        raise CorruptBlockError(height, f"stored under height {height} but says {block.height}")
    return block


def _integrity_reason(e: sqlite3.IntegrityError) -> str:
    text = str(e)
    if "txs.tx_id" in text:
        return "a transaction is already committed"
    if "blocks.height" in text:
        return "a block at that height already exists"
    return text
