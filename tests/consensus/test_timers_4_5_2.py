"""The view-change timer under load (section 4.5.2) and admission control in front of it: a
primary making progress, however slowly, is not replaced; one that never executes a given
request is; a backlog too old refuses new client requests instead of growing."""

from __future__ import annotations

from consensus import normal
from consensus.events import DropReason, Ready, Submit, Tick
from consensus.messages import Prepare, PrePrepare, Request
from tests.consensus.harness import start, tx, tx_count


def test_a_slot_preparing_restarts_the_timer_of_a_backup_waiting_for_execution() -> None:
    """A backup waits on requests; just before its timer would fire, the primary's next batch
    prepares (a quorum took its order). That is progress: the timer starts over, although
    nothing has executed yet."""
    c = start(view_timeout_ms=1000, request_timeout_ms=60_000)
    c.submit(1, [tx(i) for i in range(3)])
    backup = c.nodes[1].replica
    first = backup.vc_deadline_ms
    assert first is not None
    c.now += 900
    # Only the pre-prepare and the prepares reach backup 1: no commit, no execution yet.
    c.run(60, drop=lambda src, dst, m: dst == 1 and not isinstance(m, PrePrepare | Prepare))
    assert backup.last_executed == 0
    assert backup.log.get(1) is not None and backup.log.get(1).prepared_proof is not None
    assert backup.vc_deadline_ms is not None and backup.vc_deadline_ms > first


def test_a_primary_that_executes_others_but_never_one_request_is_replaced() -> None:
    """Censorship: the primary never lets one request in (its client's node relays it to the
    backups, which then hold it) while it keeps committing everyone else's. Progress
    restarts the timer, so only the request's own age can catch this: the backups move to
    view 1 and the censored request commits there."""
    c = start(view_timeout_ms=300, request_timeout_ms=1500)
    censored = tx(999)

    def primary_never_hears_of_it(src: int, dst: int, m: object) -> bool:
        return dst == 0 and isinstance(m, Request) and censored[0] in m.tx_ids

    c.submit(1, [censored])
    for k in range(40):
        c.submit(0, [tx(k)])
        c.run(100, drop=primary_never_hears_of_it)
    assert all(n.replica.view >= 1 for n in c.nodes[1:])
    assert all(censored[0] in n.app.committed for n in c.nodes[1:])
    assert tx_count(c.nodes[1]) == 41


def test_an_honest_primary_with_a_long_backlog_keeps_its_view() -> None:
    """Far more requests than one batch at a time can carry, all of them executed in order,
    slowly: no view change, although the backlog waits much longer than view_timeout_ms."""
    c = start(view_timeout_ms=200, max_inflight=1, max_batch_txs=2, admission_max_age_ms=60_000)
    c.submit(1, [tx(i) for i in range(120)])
    c.run(6000)
    assert [n.replica.view for n in c.nodes] == [0, 0, 0, 0]
    assert all(tx_count(n) == 120 for n in c.nodes)


def _relayed_by(src: int, seen: dict[int, int]) -> object:
    """A drop filter that drops nothing and counts the transactions ``src`` sends each replica
    in Requests."""

    def count(s: int, dst: int, m: object) -> bool:
        if s == src and isinstance(m, Request):
            seen[dst] = seen.get(dst, 0) + len(m.tx_ids)
        return False

    return count


def test_a_silent_primary_gets_waiting_requests_relayed_to_every_replica() -> None:
    """No progress: the primary may have crashed holding the only other copy, so the backup
    relays its waiting requests to all, and whichever becomes primary takes them up."""
    c = start(view_timeout_ms=200, request_timeout_ms=60_000)
    c.down = {0}
    seen: dict[int, int] = {}
    c.submit(1, [tx(i) for i in range(3)])
    c.run(1500, drop=_relayed_by(1, seen))
    assert seen.get(2, 0) >= 3 and seen.get(3, 0) >= 3, seen


def _relay_from(node: int, progress_ms: int) -> list[int | None]:
    """Where ``node``'s replica relays its own requests, 500 ms after they arrived, when its
    primary last made progress at ``progress_ms`` (None: to every replica)."""
    c = start(
        view_timeout_ms=200,
        request_timeout_ms=60_000,
        admission_max_age_ms=60_000,
        max_inflight=1,
        max_batch_txs=1,
    )
    c.down = {i for i in range(4) if i != node}  # nothing is ordered: the requests wait
    r = c.nodes[node].replica
    r.step(Submit(tuple(tx(i)[0] for i in range(3)), tuple(tx(i)[1] for i in range(3))), 0)
    r.now_ms, r.progress_ms = 500, progress_ms
    out = Ready()
    normal.relay_stale(r, out)
    return [dest for dest, m in out.send if isinstance(m, Request)]


def test_where_waiting_requests_go_depends_on_whether_the_primary_works() -> None:
    """While the primary makes progress a backup re-sends to the primary and the primary hands
    its own unproposed requests to the next f primaries (who take them up after a view
    change); with no progress for half a view timeout, both relay to every replica."""
    assert _relay_from(1, progress_ms=450) == [0]
    assert _relay_from(0, progress_ms=450) == [1]
    assert _relay_from(1, progress_ms=100) == [None]
    assert _relay_from(0, progress_ms=100) == [None]


def test_a_backlog_older_than_the_admission_bound_refuses_new_requests() -> None:
    """Admission control: once the oldest request held has waited admission_max_age_ms, new
    client requests are refused by id (the shell answers 503 + Retry-After); requests the
    shell already acknowledged (re-offered) are still taken."""
    c = start(admission_max_age_ms=500, view_timeout_ms=5000, request_timeout_ms=60_000)
    c.down = {0}  # nothing commits, so the first requests keep waiting
    r = c.nodes[1].replica
    ready = r.step(Submit((tx(1)[0],), (tx(1)[1],)), 0)
    assert not ready.refused()
    ready = r.step(Submit((tx(2)[0],), (tx(2)[1],)), 400)
    assert not ready.refused()
    ready = r.step(Submit((tx(3)[0], tx(1)[0]), (tx(3)[1], tx(1)[1])), 600)
    assert ready.refused() == {tx(3)[0]: DropReason.BACKLOG_TOO_OLD}
    assert tx(3)[0] not in r.mempool
    ready = r.step(Submit((tx(4)[0],), (tx(4)[1],), acknowledged=True), 700)
    assert not ready.refused() and tx(4)[0] in r.mempool
    r.step(Tick(), 800)


def test_the_mempool_is_bounded_in_bytes_too() -> None:
    c = start(mempool_max_bytes=2 * len(tx(0)[1]))
    r = c.nodes[1].replica
    txs = [tx(i) for i in range(3)]
    ready = r.step(Submit(tuple(t for t, _ in txs), tuple(b for _, b in txs)), 0)
    assert ready.refused() == {txs[2][0]: DropReason.MEMPOOL_FULL}
    assert r.mempool.nbytes == 2 * len(tx(0)[1])


def test_backups_that_suspect_a_crashed_primary_move_within_a_round_trip() -> None:
    """Before it suspects the primary a backup must hear a quorum after its timer fired (so a
    replica cut off alone does not run ahead), and peers are heard from at their heartbeats.
    Backups whose timers fire just after a heartbeat round used to wait most of a heartbeat
    interval for the next one (0.45 s of a 3.2 s commit gap in the primary-crash scenario at
    load): a backup that begins to suspect sends a heartbeat at once, so the others hear it
    within a round trip and the view change starts then."""
    c = start(view_timeout_ms=1000, heartbeat_ms=500, request_timeout_ms=60_000)
    c.down = {0}
    c.run(15)
    for b in (1, 2, 3):
        c.submit(b, [tx(b)])  # each backup's timer now fires at 1015, after the heartbeat at 1000
    c.run(1015 + 150 - c.now)
    assert [n.replica.view for n in c.nodes[1:]] == [1, 1, 1]
    assert all(n.replica.view_active for n in c.nodes[1:])
