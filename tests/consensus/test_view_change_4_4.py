"""View changes (Castro & Liskov, section 4.4) and the timers that drive them (section 4.5.2)."""

from __future__ import annotations

from consensus.events import DropReason, Ready, Receive, Tick, ViewChangeCause
from consensus.hashing import GENESIS_HASH
from consensus.messages import (
    Commit,
    FetchRequest,
    FetchResponse,
    Prepare,
    Request,
    Suspect,
    ViewChange,
)
from consensus.viewchange import SUSPICION_FRESH_TIMEOUTS, start_view_change, suspect_primary
from tests.consensus.harness import assert_same_chain, start, tx, tx_count


def test_backups_replace_a_crashed_primary_and_its_requests_commit_in_the_new_view() -> None:
    """Section 4.4: backups whose timers expire move to view v+1; the new primary's new-view
    carries the prepared requests; a replica that missed it learns the view later."""
    c = start()
    c.submit(1, [tx(i) for i in range(30)])
    c.run(300)
    c.down = {0}
    c.submit(2, [tx(i) for i in range(100, 140)])
    c.run(8000)
    assert [n.replica.view for n in c.nodes[1:]] == [1, 1, 1]
    assert all(tx_count(n) == 70 for n in c.nodes[1:])
    assert_same_chain(c, [1, 2, 3])
    c.down = set()
    c.submit(3, [tx(i) for i in range(200, 210)])
    c.run(6000)
    assert_same_chain(c)
    assert c.nodes[0].replica.view == 1, "a stale replica must learn the new view"


def test_new_view_reissues_committed_batches_by_digest_and_a_laggard_fetches_them() -> None:
    """Section 4.4 (the set O): a backup that prepared but never saw commits lacks decided
    blocks when the primary dies; the new-view names them by digest only and the backup fetches
    them by state transfer."""
    c = start(checkpoint_interval=8, watermark_window=16)
    c.submit(1, [tx(i) for i in range(55)])
    c.run(50, drop=lambda src, dst, m: dst == 3 and isinstance(m, Commit))
    assert c.nodes[3].replica.last_executed == 0 < c.nodes[1].replica.last_executed
    c.down = {0}
    c.submit(2, [tx(i) for i in range(100, 150)])
    c.run(8000)
    assert_same_chain(c, [1, 2, 3])
    assert all(tx_count(c.nodes[i]) == 105 for i in (1, 2, 3))
    nv = c.nodes[1].replica.new_view_msg
    assert nv is not None and nv.view == 1
    assert all(p.pre_prepare.batch.txs == () for vc in nv.view_changes for p in vc.prepared)


def test_an_isolated_replica_does_not_start_view_changes_it_cannot_finish() -> None:
    """Section 4.5.2 (liveness), pre-vote in spirit: a replica that cannot reach a quorum does
    not start a view change it cannot finish; once the partition heals it is still in the
    cluster's view."""
    c = start()
    c.run(100)
    c.cut = {3}  # it keeps running: its timers fire
    c.submit(3, [tx(i) for i in range(10)])  # only the isolated replica has them
    c.run(10_000)
    r3 = c.nodes[3].replica
    assert r3.view == 0 and not r3.in_view_change
    c.cut = set()
    c.run(5_000)
    assert all(n.replica.view == 0 and not n.replica.in_view_change for n in c.nodes)
    assert all(tx_count(n) == 10 for n in c.nodes)
    assert_same_chain(c)


def test_a_backup_cut_off_under_load_does_not_start_a_view_change() -> None:
    """Section 4.5.2 (liveness), found by the minority-partition scenario at half of peak: a
    backup cut off while requests are in flight has its timer armed from its last progress,
    and every message it last heard came just before that progress; a reachability window as
    long as the view timeout still counted those peers as reachable when the timer fired, so
    it moved to view 1 alone and stayed in a view change after the heal. It must first hear
    from a quorum after it suspects the primary."""
    # The primary holds partial batches 20 ms (batch_timeout_ms), so the backup's last request
    # is still waiting, its timer armed, when the cut comes 5 ms later.
    c = start(batch_timeout_ms=20)
    for step in range(40):  # steady load, some of it through the backup
        c.submit(0, [tx(1000 * step + i) for i in range(5)])
        c.submit(3, [tx(1000 * step + 600)])
        c.run(25)
    c.submit(3, [tx(999_999)])  # its timer is armed now, just after the last messages arrived
    c.run(5)
    assert c.nodes[3].replica.vc_deadline_ms is not None
    c.cut = {3}
    for step in range(40, 400):
        c.submit(0, [tx(1000 * step + i) for i in range(5)])
        c.submit(3, [tx(1000 * step + 500)])
        c.run(25)
    r3 = c.nodes[3].replica
    assert r3.view == 0 and not r3.in_view_change, "a cut-off backup started a view change"
    c.cut = set()
    c.run(6_000)
    assert all(n.replica.view == 0 and not n.replica.in_view_change for n in c.nodes)
    assert_same_chain(c)


def test_a_primary_never_suspects_itself() -> None:
    """Section 4.4: the backups time the primary. Found at twice the peak load: a primary whose
    own pipeline waited on slow backups for a view timeout fired its timer, and its view-change
    with one backup's made the f+1 that moved everyone while it was committing. Here nothing
    the primary sends but its heartbeats gets through, and only it holds requests."""
    c = start()
    c.run(100)
    c.submit(0, [tx(i) for i in range(10)])
    c.run(10_000, drop=lambda src, dst, m: src == 0 and not isinstance(m, FetchRequest))
    r0 = c.nodes[0].replica
    assert r0.view == 0 and not r0.in_view_change and r0.vc_deadline_ms is None
    assert all(n.replica.view == 0 for n in c.nodes)
    c.run(3_000)
    assert all(tx_count(n) == 10 for n in c.nodes)


def test_a_view_change_says_why_it_started() -> None:
    c = start()
    causes: list[tuple[int, ViewChangeCause]] = []
    apply = c.apply

    def noting(i: int, ready: Ready) -> None:
        if ready.view_change_cause is not None:
            causes.append((i, ready.view_change_cause))
        apply(i, ready)

    c.apply = noting  # type: ignore[method-assign]
    c.submit(1, [tx(1)])
    c.down = {0}
    c.run(8_000)
    # The first to move is a backup whose own timer made the f+1-th suspicion; replicas that
    # heard f+1 suspicions (or view-changes) before their timer fired say so.
    assert causes and causes[0][1] == ViewChangeCause.VIEW_TIMER
    assert {cause for _, cause in causes} <= {
        ViewChangeCause.VIEW_TIMER,
        ViewChangeCause.SUSPECTED,
        ViewChangeCause.F_PLUS_ONE,
    }


def test_the_view_change_timer_starts_only_with_2f_plus_1_view_changes() -> None:
    """Section 4.5.2: a replica in a view change does not climb views on new requests while no
    quorum of view-changes for its view has arrived."""
    c = start()
    r = c.nodes[1].replica
    r.step(Tick(), 0)
    start_view_change(r, 1, Ready(), ViewChangeCause.VIEW_TIMER)
    for t in range(1, 20):
        r.step(Tick(), t * 1000)
        c.submit(1, [tx(1000 + t)])
    assert r.view == 1, "no quorum of view-changes for view 1: its timer must not run"


def test_a_replica_just_reconnected_catches_up_before_suspecting_the_primary() -> None:
    """Section 4.5.2 (liveness), found by the minority-partition scenario: the timer of a
    replica that had been cut off fired 150 ms after the heal, before state transfer and
    request relays had run; it started a view change nobody joined and stayed out of the
    protocol."""
    c = start()
    c.run(100)
    c.down = {3}
    c.submit(3, [tx(i) for i in range(10)])
    c.submit(0, [tx(i) for i in range(100, 140)])
    c.run(6_000)
    c.down = set()
    slow_catch_up = lambda src, dst, m: (  # noqa: E731
        (dst == 3 and isinstance(m, FetchResponse)) or (src == 3 and isinstance(m, Request))
    )
    c.run(1_000, drop=slow_catch_up)
    assert not c.nodes[3].replica.in_view_change
    c.run(3_000)
    assert all(n.replica.view == 0 and not n.replica.in_view_change for n in c.nodes)
    assert all(tx_count(n) == 50 for n in c.nodes)


def test_after_a_view_change_the_shell_forgets_the_earlier_views_messages() -> None:
    """Section 4.4: once a replica moves to view v, view-changes and new-views for views
    below v are never needed again; the core says so in ``Ready.retain``."""
    c = start()
    r = c.nodes[1].replica
    out = Ready()
    start_view_change(r, 2, out, ViewChangeCause.VIEW_TIMER)
    assert out.view_changed == 2 and out.retain is not None
    assert out.retain.covers(ViewChange(1, 0, GENESIS_HASH, (), (), 3))
    assert not out.retain.covers(ViewChange(2, 0, GENESIS_HASH, (), (), 3))
    assert not out.retain.covers(Prepare(1, 1, bytes(32), 3))


def test_a_request_a_backup_holds_only_in_a_pre_prepare_still_starts_its_timer() -> None:
    """Section 4.4: a backup is waiting for a request it received and has not executed, and
    starts its timer when it receives one. Here the backups saw the request only inside the
    pre-prepare of a primary that then goes silent, and view 0's votes never get through: the
    client's retransmission to every replica (section 4.1) must start their timers, or the
    cluster sits in view 0 forever with the request in flight (sim seed 100763)."""
    c = start()
    t1 = tx(1)

    def view_0_votes(src: int, dst: int, m: object) -> bool:
        return isinstance(m, Prepare | Commit) and m.view == 0

    c.submit(0, [t1])
    c.run(50, drop=view_0_votes)
    assert all(c.nodes[i].replica.log.slot(1).pre_prepare is not None for i in (1, 2, 3))
    assert all(c.nodes[i].replica.mempool_size == 0 for i in (1, 2, 3))
    c.down = {0}
    for i in (1, 2, 3):
        c.submit(i, [t1])
    c.run(3000, drop=view_0_votes)
    assert [n.replica.view for n in c.nodes[1:]] == [1, 1, 1], "the silent primary is replaced"
    for i in (1, 2, 3):
        c.submit(i, [t1])
    c.run(3000)
    assert all(tx_count(n) == 1 for n in c.nodes[1:])
    assert_same_chain(c, [1, 2, 3])


def _behind(replica: int) -> object:
    """Drop everything that would show ``replica`` the primary's progress, not the heartbeats
    that tell it a quorum is there: it lags (as a restarted or CPU-starved replica does)."""
    return lambda src, dst, m: dst == replica and not isinstance(m, FetchRequest | Suspect)


def test_a_backup_that_alone_sees_no_progress_stays_in_the_view() -> None:
    """A lone timer does not move a replica: found by the rolling-restart scenario at peak, a
    just-restarted backup timed out alone, moved to view 3, and sat in that view change to the
    end while the others worked in 2. The heartbeats it hears say the others execute past it,
    so it does not even suspect the primary (``viewchange._we_are_behind``)."""
    c = start()
    c.run(100)
    c.submit(3, [tx(k) for k in range(5)])  # its timer runs on these
    for k in range(30):  # the others commit; replica 3 hears only heartbeats
        c.submit(1, [tx(1000 + k)])
        c.run(200, drop=_behind(3))
    r3 = c.nodes[3].replica
    assert all(n.replica.view == 0 and not n.replica.in_view_change for n in c.nodes)
    assert r3.vc_deadline_ms is not None, "its timer should be running"
    assert all(not n.replica.suspicions for n in c.nodes), "it is behind, not the primary"
    c.run(4_000)  # it hears the primary again, catches up, and the suspicion is gone
    assert all(n.replica.view == 0 and not n.replica.in_view_change for n in c.nodes)
    assert all(tx_count(n) == 35 for n in c.nodes)
    assert_same_chain(c)
    assert 3 not in r3.suspicions


def _suspect(c: object, i: int, view: int) -> Suspect:
    crypto = c.nodes[i].replica.crypto  # type: ignore[attr-defined]
    unsigned = Suspect(view, i)
    return Suspect(view, i, crypto.sign(unsigned.signing_bytes()))


def test_f_plus_1_fresh_suspicions_ours_among_them_start_a_view_change() -> None:
    c = start()
    r2 = c.nodes[2].replica
    c.feed(2, Receive(_suspect(c, 1, 0), 1))
    c.feed(2, Receive(_suspect(c, 3, 0), 3))
    # Two lagging backups suspect; a replica that sees the primary work does not start a
    # view change on their word (it follows f+1 view-changes if they move).
    assert r2.view == 0 and not r2.in_view_change
    c.now += SUSPICION_FRESH_TIMEOUTS * r2.view_timeout_ms() + 1  # both go stale
    r2.step(Tick(), c.now)
    suspect_primary(r2, Ready(), ViewChangeCause.VIEW_TIMER)  # its own timer fires
    assert r2.view == 0 and not r2.in_view_change, "stale suspicions counted"
    ready = r2.step(Receive(_suspect(c, 1, 0), 1), c.now)
    assert r2.view == 1 and r2.in_view_change
    assert ready.view_change_cause == ViewChangeCause.SUSPECTED


def test_progress_withdraws_our_suspicion() -> None:
    c = start()
    r2 = c.nodes[2].replica
    suspect_primary(r2, Ready(), ViewChangeCause.VIEW_TIMER)
    r2.restart_view_timer()  # a batch prepared or executed here
    r2.step(Receive(_suspect(c, 1, 0), 1), c.now)
    assert r2.view == 0 and not r2.in_view_change
    assert r2.suspicions == {1: c.now}


def test_a_commit_sent_after_a_suspicion_withdraws_it() -> None:
    """Replica 1 suspected, then prepared a batch (its Commit says so): it saw progress and
    withdrew its suspicion, so replica 2's own timeout is alone. Measured at twice the peak:
    a lagging backup counted a suspicion 3.1 s old whose sender had long seen progress, moved
    to view 1 alone and sat in that view change for 38 s, out of every quorum."""
    c = start()
    r2 = c.nodes[2].replica
    c.feed(2, Receive(_suspect(c, 1, 0), 1))
    assert 1 in r2.suspicions
    crypto = c.nodes[1].replica.crypto
    unsigned = Commit(0, r2.last_executed + 1, b"\x11" * 32, 1)
    c.feed(
        2,
        Receive(
            Commit(0, unsigned.seq, unsigned.digest, 1, crypto.sign(unsigned.signing_bytes())), 1
        ),
    )
    assert 1 not in r2.suspicions
    suspect_primary(r2, Ready(), ViewChangeCause.VIEW_TIMER)
    assert r2.view == 0 and not r2.in_view_change
    forged = Commit(0, unsigned.seq + 1, b"\x11" * 32, 3, b"\x00" * 64)
    c.feed(2, Receive(_suspect(c, 3, 0), 3))
    c.feed(2, Receive(forged, 3))  # a forged commit withdraws nothing
    assert r2.view == 1 and r2.in_view_change


def _commit(c: object, i: int, view: int, seq: int) -> Commit:
    crypto = c.nodes[i].replica.crypto  # type: ignore[attr-defined]
    unsigned = Commit(view, seq, b"\x22" * 32, i)
    return Commit(view, seq, unsigned.digest, i, crypto.sign(unsigned.signing_bytes()))


def _fire_view_timer(c: object, i: int, executed: dict[int, int] | None = None) -> Ready:
    """Expire replica i's view timer just after hearing every peer's heartbeat (so neither
    deferral for an unreachable quorum applies), each naming the seq it executed
    (``executed``, else 0), and return what the firing did."""
    r = c.nodes[i].replica  # type: ignore[attr-defined]
    r.vc_deadline_ms = None  # not while the heartbeats come in
    for j in range(r.n):
        if j != i:
            at = (executed or {}).get(j, 0) + 1
            c.feed(i, Receive(FetchRequest(at, at, j), j))  # type: ignore[attr-defined]
    r.vc_deadline_ms = c.now  # type: ignore[attr-defined]
    return r.step(Tick(), c.now)  # type: ignore[attr-defined, no-any-return]


def test_a_timeout_while_f_plus_1_others_execute_past_us_is_ours_not_the_primarys() -> None:
    """Replicas 1 and 3 say they executed up to seq 5, rising lately (one of them is honest:
    the cluster decides blocks); replica 2, at seq 0, timed out because it fell behind. It
    does not suspect the primary until their positions stop rising for a view timeout."""
    c = start()
    r2 = c.nodes[2].replica
    c.submit(2, [tx(1)])  # a request waits here, so the view timer runs
    _fire_view_timer(c, 2)  # they are at 0 too: it suspects
    r2.suspicions.clear()
    r2.suspected_at_ms = None
    c.now += r2.view_timeout_ms() // 2
    ready = _fire_view_timer(c, 2, {1: 5, 3: 5})
    assert ready.suspected is None and r2.id not in r2.suspicions
    assert r2.vc_deadline_ms is not None and r2.vc_deadline_ms > c.now, "it looks again"
    c.now += r2.view_timeout_ms() + 1  # they got no further since: now the primary is suspect
    ready = _fire_view_timer(c, 2, {1: 5, 3: 5})
    assert ready.suspected == ViewChangeCause.VIEW_TIMER and r2.id in r2.suspicions


def test_one_replica_executing_past_us_does_not_hold_back_a_suspicion() -> None:
    """One replica's word (it may be the byzantine one) proves nothing: f+1 are needed."""
    c = start()
    r2 = c.nodes[2].replica
    c.submit(2, [tx(1)])
    _fire_view_timer(c, 2)
    r2.suspicions.clear()
    r2.suspected_at_ms = None
    c.now += 100
    ready = _fire_view_timer(c, 2, {3: 5})
    assert ready.suspected == ViewChangeCause.VIEW_TIMER


def test_a_retransmitted_commit_does_not_withdraw_a_suspicion() -> None:
    """A stalled seq's commits are sent again every retransmit interval: no news of progress."""
    c = start()
    r2 = c.nodes[2].replica
    seq = r2.last_executed + 1
    c.feed(2, Receive(_commit(c, 1, 0, seq), 1))
    c.feed(2, Receive(_suspect(c, 1, 0), 1))
    c.feed(2, Receive(_commit(c, 1, 0, seq), 1))  # the same commit again
    assert 1 in r2.suspicions
    c.feed(2, Receive(_commit(c, 1, 0, seq + 1), 1))  # a new seq prepared: it saw progress
    assert 1 not in r2.suspicions


def test_a_suspicion_with_a_bad_signature_or_of_another_view_does_not_count() -> None:
    c = start()
    r2 = c.nodes[2].replica
    forged = Suspect(0, 1, b"\x00" * 64)
    ready = r2.step(Receive(forged, 1), c.now)
    assert [d.reason for d in ready.dropped] == [DropReason.BAD_SIGNATURE]
    r2.step(Receive(_suspect(c, 3, 1), 3), c.now)  # a view we are not in
    assert r2.suspicions == {}
    r2.step(Receive(_suspect(c, 3, 0), 3), c.now)
    assert r2.suspicions == {3: c.now}
