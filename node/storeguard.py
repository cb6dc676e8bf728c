"""The store fails safe: it is watched while open, and a node that voted never restarts blank.

- :class:`StoreWatch` notices within one check interval that the database file the node opened
  was deleted, truncated or replaced (device/inode/size and the SQLite header), or that its WAL
  was deleted or replaced: SQLite would go on writing into unlinked files, and everything the
  node commits afterwards would be lost at its next start. The node then stops (runtime).
- The voted marker, ``DATA_DIR/../<data dir name>.voted``, lives outside the data directory so
  that losing or wiping the directory leaves it. It is written (durably, once) after the first
  consensus messages are persisted and before they are sent.
- :func:`open_store` refuses to start a node that has the marker on an empty or damaged store
  (it could sign votes contradicting the ones it forgot), unless the operator says ``wipe``:
  then the data directory is erased and the node rejoins by state transfer.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Final

from node.store import (
    PRIVATE_DIR_MODE,
    PRIVATE_FILE_MODE,
    Store,
    StoreError,
)

log = logging.getLogger("medchain.store")

SQLITE_MAGIC: Final = b"SQLite format 3\x00"
VOTED_SUFFIX: Final = ".voted"


class StoreRefused(StoreError):
    """The node must not start on this store without the operator's ``--wipe``."""


def voted_marker_path(data_dir: Path) -> Path:
    """Where a node records that it once voted: beside its data directory, not in it."""
    return data_dir.parent / f"{data_dir.name}{VOTED_SUFFIX}"


def write_marker(path: Path, text: str) -> None:
    """Create ``path`` (0600) durably: temp file, fsync, rename, fsync of the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class StoreWatch:
    """Checks that the files SQLite holds open are still the ones at their paths."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._wal = Path(f"{path}-wal")
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        st = os.fstat(self._fd)
        self._id = (st.st_dev, st.st_ino)
        self._size = st.st_size
        self._wal_id = _file_id(self._wal)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def check(self) -> str | None:
        """None while the store is intact; else one line saying what happened to it."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return f"database {self.path} was deleted"
        except OSError as e:
            return f"database {self.path} cannot be checked: {e.strerror or e}"
        if (st.st_dev, st.st_ino) != self._id:
            return f"database {self.path} was replaced by another file"
        if st.st_size < self._size:
            return f"database {self.path} was truncated ({self._size} -> {st.st_size} bytes)"
        self._size = st.st_size
        if st.st_size and os.pread(self._fd, len(SQLITE_MAGIC), 0) != SQLITE_MAGIC:
            return f"database {self.path}: its SQLite header was overwritten"
        if self._wal_id is not None and _file_id(self._wal) != self._wal_id:
            return f"write-ahead log {self._wal} was deleted or replaced"
        return None


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


def open_store(
    data_dir: Path, file_name: str, *, node_id: int, vote_log_sync: str, wipe: bool
) -> Store:
    """Open (or create) the node's store, refusing a blank or damaged one after a vote.

    Returns a store whose first vote writes the marker. Raises StoreRefused naming --wipe."""
    marker = voted_marker_path(data_dir)
    voted = marker.exists()
    if wipe:
        log.warning("wiping %s at the operator's request; rejoining by state transfer", data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)
    path = data_dir / file_name
    if voted and not wipe and not path.exists():
        raise _refusal(node_id, marker, f"its database {path} is missing")
    data_dir.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    secure_tree(data_dir)

    def mark() -> None:
        write_marker(marker, f"node {node_id} persisted consensus messages\n")

    try:
        store = Store(
            path, vote_log_sync=vote_log_sync.upper(), on_first_vote=None if voted else mark
        )
    except (StoreError, sqlite3.Error) as e:
        if voted and not wipe:
            raise _refusal(node_id, marker, f"its database is damaged ({e})") from None
        raise
    if voted and not wipe and store.head()[0] == 0 and store.message_count() == 0:
        store.close()
        raise _refusal(node_id, marker, f"its database {path} is empty")
    return store


def _refusal(node_id: int, marker: Path, why: str) -> StoreRefused:
    return StoreRefused(
        f"node {node_id} voted before ({marker} exists) but {why}: refusing to start as a blank "
        "replica that could sign votes contradicting the ones it forgot; restart with --wipe "
        "to erase the data directory and rejoin by state transfer"
    )


def secure_tree(data_dir: Path) -> None:
    """The data directory 0700 and the files directly in it 0600 (stores of older builds)."""
    for entry in [data_dir, *data_dir.iterdir()]:
        try:
            st = entry.lstat()
        except FileNotFoundError:
            continue
        if st.st_uid != os.getuid() or entry.is_symlink():
            continue
        mode = PRIVATE_DIR_MODE if entry.is_dir() else PRIVATE_FILE_MODE
        if st.st_mode & 0o777 != mode:
            entry.chmod(mode)


__all__ = [
    "StoreRefused",
    "StoreWatch",
    "open_store",
    "secure_tree",
    "voted_marker_path",
    "write_marker",
]
