"""node/audit/served: blocks and headers as peers serve them (JSON), parsed and verified."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from node.audit.evidence import EvidenceError
from node.audit.served import (
    check_served_block,
    check_served_header,
    parse_block_json,
    parse_header_json,
    served_from_block,
)
from node.ledger import (
    Block,
    VerifiedCommits,
    block_header,
    block_to_json,
    header_to_json,
)
from tests.unit.helpers_audit import (
    JsonMutator,
    chain_of_ten,
    set_commit,
    set_key,
    set_tx,
)
from tests.unit.helpers_ledger import (
    CONSORTIUM,
    REGISTRY,
)


@pytest.fixture
def chain() -> list[Block]:
    return chain_of_ten()


def test_served_block_round_trip(chain: list[Block]) -> None:
    block = chain[3]
    served = served_from_block(block)
    assert check_served_block(served, CONSORTIUM, registry=REGISTRY) is None
    with_payloads = parse_block_json(block_to_json(block, include_payload=True))
    assert check_served_block(with_payloads, CONSORTIUM, registry=REGISTRY) is None
    assert with_payloads.to_block() == block
    with pytest.raises(EvidenceError, match="without its payload"):
        served.to_block()


def _drop_commit(doc: dict[str, Any]) -> None:
    doc["certificate"].pop()


def _dup_commit(doc: dict[str, Any]) -> None:
    doc["certificate"][1] = copy.deepcopy(doc["certificate"][0])


ALTERATIONS: dict[str, tuple[JsonMutator, str]] = {
    "tx patient": (set_tx("patient", "patient-666"), "does not match its tx_id"),
    "tx payload hash": (set_tx("payload_hash", "00" * 32), "does not match its tx_id"),
    "tx signature": (set_tx("signature", "00" * 64), "bad signature"),
    "tx id": (set_tx("tx_id", "00" * 32), "does not match its tx_id"),
    "tx payload": (set_tx("payload", "00"), "payload hash mismatch"),
    "merkle root": (set_key("merkle_root", "00" * 32), "merkle root"),
    "timestamp": (set_key("timestamp_ms", 1), "digest does not match"),
    "digest": (set_key("digest", "00" * 32), "digest does not match"),
    "hash": (set_key("hash", "00" * 32), "block hash does not match"),
    "prev hash": (set_key("prev_hash", "00" * 32), "block hash does not match"),
    "commit signature": (set_commit("signature", "00" * 64), "bad commit signature"),
    "commit digest": (set_commit("digest", "00" * 32), "another digest"),
    "commit replica": (set_commit("replica", 3), "bad commit signature"),
    "commit view": (set_commit("view", 9), "different views"),
    "commit missing": (_drop_commit, "quorum is 3"),
    "commit duplicated": (_dup_commit, "duplicate commit"),
    "tx count": (set_key("tx_count", 5), "tx_count"),
    "height type": (set_key("height", "3"), "block.height"),
    "unregistered client": (set_tx("hospital", "hospital-9"), "does not match its tx_id"),
}


@pytest.mark.parametrize("name", sorted(ALTERATIONS))
def test_every_alteration_of_a_served_block_is_caught(chain: list[Block], name: str) -> None:
    mutate, expected = ALTERATIONS[name]
    doc = block_to_json(chain[3], include_payload=True)
    mutate(doc)
    try:
        problem = check_served_block(parse_block_json(doc), CONSORTIUM, registry=REGISTRY)
    except EvidenceError as e:
        problem = e.reason
    assert problem is not None and expected in problem


HEADER_ALTERATIONS: dict[str, tuple[JsonMutator, str]] = {
    "merkle root": (set_key("merkle_root", "00" * 32), "digest does not match"),
    "timestamp": (set_key("timestamp_ms", 1), "digest does not match"),
    "tx count": (set_key("tx_count", 5), "digest does not match"),
    "digest": (set_key("digest", "00" * 32), "digest does not match"),
    "hash": (set_key("hash", "00" * 32), "block hash does not match"),
    "prev hash": (set_key("prev_hash", "00" * 32), "block hash does not match"),
    "proposer": (set_key("proposer", 9), "not a consortium member"),
    "commit signature": (set_commit("signature", "00" * 64), "bad commit signature"),
    "commit digest": (set_commit("digest", "00" * 32), "another digest"),
    "commit replica": (set_commit("replica", 3), "bad commit signature"),
    "commit view": (set_commit("view", 9), "different views"),
    "commit missing": (_drop_commit, "quorum is 3"),
    "commit duplicated": (_dup_commit, "duplicate commit"),
    "height type": (set_key("height", "3"), "header.height"),
    "hash not hex": (set_key("hash", "zz" * 32), "not valid hex"),
    "no certificate": (set_key("certificate", None), "header.certificate"),
}


def test_served_header_round_trip(chain: list[Block]) -> None:
    for block in (chain[3], chain[0]):
        doc = header_to_json(block_header(block))
        assert "txs" not in doc and doc == {
            k: v for k, v in block_to_json(block).items() if k != "txs"
        }
        header = parse_header_json(doc)
        assert (header.block_hash, header.digest, header.tx_count) == (
            block.block_hash,
            block.digest,
            len(block.txs),
        )
        assert check_served_header(header, CONSORTIUM) is None
        # A whole block document parses as its header.
        assert parse_header_json(block_to_json(block)) == header


@pytest.mark.parametrize("name", sorted(HEADER_ALTERATIONS))
def test_every_alteration_of_a_served_header_is_caught(chain: list[Block], name: str) -> None:
    mutate, expected = HEADER_ALTERATIONS[name]
    doc = header_to_json(block_header(chain[3]))
    mutate(doc)
    try:
        problem = check_served_header(parse_header_json(doc), CONSORTIUM)
    except EvidenceError as e:
        problem = e.reason
    assert problem is not None and expected in problem


def test_verified_commits_spare_only_identical_signatures(chain: list[Block]) -> None:
    block = chain[3]
    verified = VerifiedCommits(16)
    header = parse_header_json(header_to_json(block_header(block)))
    assert check_served_header(header, CONSORTIUM, verified_commits=verified) is None
    assert (verified.hits, verified.misses, len(verified)) == (0, 3, 3)
    assert check_served_header(header, CONSORTIUM, verified_commits=verified) is None
    assert verified.hits == 3
    # A cached good signature never vouches for a different one over the same commit.
    doc = header_to_json(block_header(block))
    doc["certificate"][0]["signature"] = "00" * 64
    problem = check_served_header(parse_header_json(doc), CONSORTIUM, verified_commits=verified)
    assert problem is not None and "bad commit signature" in problem


def test_known_signatures_skip_only_identical_signatures(chain: list[Block]) -> None:
    block = chain[3]
    known = {env.tx_id: env.tx.signature for env in block.txs}
    assert check_served_block(served_from_block(block), CONSORTIUM, known_signatures=known) is None
    doc = block_to_json(block)
    doc["txs"][1]["signature"] = "11" * 64
    problem = check_served_block(parse_block_json(doc), CONSORTIUM, known_signatures=known)
    assert problem is not None and "tx 1" in problem and "bad signature" in problem
