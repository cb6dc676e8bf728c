"""State transfer (Castro & Liskov TOCS, section 5.3.2, simplified to whole certified blocks)."""

from __future__ import annotations

from consensus.events import DropReason, Receive
from consensus.messages import Batch, CertifiedBlock, Commit, FetchResponse
from tests.consensus.harness import assert_same_chain, start, tx, tx_count


def test_a_replica_that_missed_blocks_fetches_them_from_its_peers() -> None:
    """Section 5.3.2: a replica behind the others catches up by fetching certified blocks."""
    c = start()
    c.down = {3}
    c.submit(0, [tx(i) for i in range(120)])
    c.run(2000)
    assert c.nodes[3].replica.last_executed == 0
    c.down = set()
    c.run(5000)
    assert_same_chain(c)
    assert tx_count(c.nodes[3]) == 120


def test_a_fetched_block_with_a_valid_certificate_but_an_invalid_request_is_refused() -> None:
    """Section 5.3.2: a certificate covers transaction ids, not their signatures, so a peer's
    corrupted copy (e.g. a flipped signature byte) must not enter a chain by state transfer."""
    c = start()
    bad = (b"\x01" * 32, b"bad-signature")
    batch = Batch(0, 0, 0, (bad[0],), (bad[1],))
    commits = tuple(c.nodes[i].replica.sign(Commit(0, 1, batch.digest(), i)) for i in range(3))
    resp = FetchResponse((CertifiedBlock(1, batch, commits),), 2)
    out = c.nodes[3].replica.step(Receive(resp, 2), 0)
    assert not out.committed
    assert any(d.reason is DropReason.FETCHED_BLOCK_REJECTED for d in out.dropped)
