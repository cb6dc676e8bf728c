"""ClusterProcesses (scripts/cluster.py) against stand-in node processes: start, readiness,
stale pid files, stop with SIGKILL escalation, signals, wipe, and down leaving nothing behind.

The stand-in (fake_node.py) only serves GET /status, so these tests exercise the launcher
itself, fast, whatever state the real node is in.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from scripts.cluster import ClusterError, ClusterProcesses, fetch_status, start_ticks
from scripts.provision import init_cluster

FAKE_NODE = Path(__file__).with_name("fake_node.py")
READY_TIMEOUT_S = 30.0


class FakeCluster(ClusterProcesses):
    def command(self, i: int) -> list[str]:
        config = str(self.layout.config_path(i))
        return [self.python, str(FAKE_NODE), "node.main", "--config", config]


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[FakeCluster]:
    root = tmp_path / "cluster"
    init_cluster(root, 4)
    cluster = FakeCluster(root)
    seen: set[int] = set()
    original_start = cluster.start

    def tracking_start(i: int) -> int:
        pid = original_start(i)
        seen.add(pid)
        return pid

    cluster.start = tracking_start  # type: ignore[method-assign]
    try:
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            cluster.down(timeout=5)
        for pid in seen:
            with contextlib.suppress(ProcessLookupError, PermissionError, psutil.Error):
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    os.killpg(pid, signal.SIGKILL)


def _gone(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def test_up_starts_every_node_and_waits_until_they_serve(procs: FakeCluster) -> None:
    started = procs.up(timeout=READY_TIMEOUT_S)
    assert started == [0, 1, 2, 3]
    for spec in procs.specs():
        assert fetch_status(spec.url) is not None
        record = json.loads(procs.layout.pid_path(spec.index).read_text())
        assert record["pid"] == procs.pid(spec.index)
        assert psutil.Process(record["pid"]).pid == os.getpgid(record["pid"])  # own group
    assert procs.up(timeout=READY_TIMEOUT_S) == []  # all running: nothing to start


def test_up_restarts_only_the_nodes_that_are_down(procs: FakeCluster) -> None:
    procs.up(timeout=READY_TIMEOUT_S)
    before = {i: procs.pid(i) for i in range(4)}
    assert procs.stop(1) is True
    assert not procs.layout.pid_path(1).exists()
    assert procs.up(timeout=READY_TIMEOUT_S) == [1]
    after = {i: procs.pid(i) for i in range(4)}
    assert after[1] != before[1]
    assert {i: after[i] for i in (0, 2, 3)} == {i: before[i] for i in (0, 2, 3)}


def test_stale_pid_files_are_not_mistaken_for_nodes(procs: FakeCluster) -> None:
    # A live process that is not our node (this test runner), and a pid that is gone.
    me = psutil.Process()
    procs.layout.run_dir.mkdir(parents=True, exist_ok=True)
    procs.layout.pid_path(0).write_text(
        json.dumps({"pid": me.pid, "create_time": me.create_time(), "config": "x"})
    )
    dead = psutil.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=READY_TIMEOUT_S)
    procs.layout.pid_path(1).write_text(json.dumps({"pid": dead.pid, "create_time": 0}))
    procs.layout.pid_path(2).write_text("not json")
    assert [procs.is_alive(i) for i in range(4)] == [False, False, False, False]
    assert procs.up(timeout=READY_TIMEOUT_S) == [0, 1, 2, 3]
    assert psutil.pid_exists(me.pid)  # never signalled


def test_a_node_is_recognised_when_its_create_time_reads_a_second_apart(
    procs: FakeCluster,
) -> None:
    """psutil's create_time adds the boot time the kernel reports at that moment, which moves
    by a second when the wall clock is adjusted: another process then computes a start time a
    second apart from the launcher's. `down` took such a node for a reused pid, deleted its
    pid file and left it running. The start time in clock ticks does not move."""
    assert procs.up([0], timeout=READY_TIMEOUT_S) == [0]
    path = procs.layout.pid_path(0)
    record = json.loads(path.read_text())
    assert isinstance(record["start_ticks"], int)
    pid = record["pid"]
    record["create_time"] += 1.0
    path.write_text(json.dumps(record))
    fresh = FakeCluster(procs.root)  # another command: not the launcher's own child
    assert fresh.is_alive(0) and fresh.pid(0) == pid
    assert fresh.down(timeout=READY_TIMEOUT_S) == [0]
    procs.stop(0)  # reap our child
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    # A pid file whose start ticks are not the process's is a reused pid, whatever the time.
    me = psutil.Process()
    ticks = start_ticks(me.pid)
    assert ticks is not None
    path.write_text(
        json.dumps(
            {
                "pid": me.pid,
                "start_ticks": ticks + 1,
                "create_time": me.create_time(),
                "config": str(procs.layout.config_path(0)),
            }
        )
    )
    assert not fresh.is_alive(0)


def test_node_that_exits_at_startup_is_reported_with_its_log(
    procs: FakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_NODE_MODE", "crash")
    with pytest.raises(ClusterError) as err:
        procs.up([2], timeout=READY_TIMEOUT_S)
    message = str(err.value)
    assert "node 2 exited during startup" in message
    assert str(procs.layout.log_path(2)) in message
    assert "refusing to start" in message


def test_stop_escalates_to_sigkill(procs: FakeCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_NODE_MODE", "ignore-term")
    procs.up([0], timeout=READY_TIMEOUT_S)
    pid = procs.pid(0)
    assert pid is not None
    assert procs.stop(0, timeout=0.5) is True
    assert _gone(pid)
    assert not procs.is_alive(0)


def test_suspended_node_is_reported_and_still_stopped_by_down(procs: FakeCluster) -> None:
    procs.up(timeout=READY_TIMEOUT_S)
    pids = [procs.pid(i) for i in range(4)]
    procs.kill(2, signal.SIGSTOP)
    state = procs.state(2)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not state.stopped and time.monotonic() < deadline:
        time.sleep(0.02)  # the kernel applies SIGSTOP asynchronously
        state = procs.state(2)
    assert state.alive and state.stopped
    procs.kill(2, signal.SIGCONT)
    procs.kill(2, signal.SIGSTOP)

    assert procs.down(timeout=5) == [0, 1, 2, 3]
    assert all(_gone(p) for p in pids if p is not None)
    assert procs.running() == []
    assert not any(procs.layout.pid_path(i).exists() for i in range(4))


def test_kill_9_leaves_node_down_and_restartable(procs: FakeCluster) -> None:
    procs.up(timeout=READY_TIMEOUT_S)
    pid = procs.kill(3)
    assert _gone(pid)
    assert not procs.is_alive(3)
    with pytest.raises(ClusterError, match="node 3 is not running"):
        procs.kill(3)
    new_pid = procs.restart(3, timeout=READY_TIMEOUT_S)
    assert new_pid != pid and procs.is_alive(3)


def test_wipe_refuses_a_running_node_and_erases_a_stopped_one(procs: FakeCluster) -> None:
    procs.up([1], timeout=READY_TIMEOUT_S)
    data = procs.spec(1).data_dir
    (data / "chain.sqlite3").write_bytes(b"chain")
    with pytest.raises(ClusterError, match="running"):
        procs.wipe(1)
    assert (data / "chain.sqlite3").exists()
    procs.stop(1)
    procs.wipe(1)
    assert not data.exists()
    assert procs.layout.node_key(1).exists() and procs.layout.config_path(1).exists()
