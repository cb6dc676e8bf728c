"""node/audit/evidence, verify_evidence, log: signed evidence, its offline check, the audit log."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from node.audit.evidence import (
    KIND_CONFLICT,
    KIND_INVALID,
    EvidenceError,
    Exhibit,
    block_exhibit_text,
    canonical_json,
    evidence_from_json,
    make_evidence,
)
from node.audit.log import AuditLog
from node.audit.verify_evidence import conflict_signers, load_evidence_file, verify_evidence
from node.ledger import (
    Block,
    block_to_json,
)
from tests.unit.helpers_audit import (
    SIGNERS,
    chain_of_ten,
    conflict_record,
    fork_chain,
)
from tests.unit.helpers_ledger import (
    CONSORTIUM,
    REGISTRY,
)


@pytest.fixture
def chain() -> list[Block]:
    return chain_of_ten()


def test_conflict_evidence_verifies_offline_and_names_signers(chain: list[Block]) -> None:
    record, _ = conflict_record(chain)
    assert verify_evidence(record, CONSORTIUM, registry=REGISTRY) is None
    doc = json.loads(canonical_json(record.to_json()))  # as stored, served and saved
    assert verify_evidence(doc, CONSORTIUM) is None
    assert evidence_from_json(doc) == record
    # ours signed by 0, 1, 2; the fork by 1, 2, 3: replicas 1 and 2 signed both.
    assert conflict_signers(record) == [1, 2]
    # No patient payloads in evidence, only their hashes.
    exhibit = json.loads(block_exhibit_text(block_to_json(chain[4], include_payload=True)))
    assert all("payload" not in tx and "payload_hash" in tx for tx in exhibit["txs"])


def _bump_hex(value: str) -> str:
    return ("0" if value[0] != "0" else "1") + value[1:]


def _tamper_exhibit(doc: dict[str, Any]) -> None:
    text = doc["exhibits"][0]["block"]
    doc["exhibits"][0]["block"] = text.replace('"view":0', '"view":1', 1)


EVIDENCE_TAMPERING: dict[str, Callable[[dict[str, Any]], None]] = {
    "reason": lambda d: d.__setitem__("reason", d["reason"] + "!"),
    "height": lambda d: d.__setitem__("height", d["height"] + 1),
    "accused": lambda d: d.__setitem__("accused", 2),
    "reporter": lambda d: d.__setitem__("reporter", 1),
    "observed": lambda d: d.__setitem__("observed_at_ms", 1),
    "source": lambda d: d.__setitem__("source", "http://elsewhere:1"),
    "label": lambda d: d["exhibits"][0].__setitem__("label", "held by replica 1"),
    "exhibit": _tamper_exhibit,
    "exhibits swapped": lambda d: d["exhibits"].reverse(),
    "signature": lambda d: d.__setitem__("signature", _bump_hex(d["signature"])),
    "kind": lambda d: d.__setitem__("kind", KIND_INVALID),
    "id": lambda d: d.__setitem__("id", "00" * 32),
}


@pytest.mark.parametrize("name", sorted(EVIDENCE_TAMPERING))
def test_tampered_evidence_fails(chain: list[Block], name: str) -> None:
    record, _ = conflict_record(chain)
    doc = record.to_json()
    EVIDENCE_TAMPERING[name](doc)
    assert verify_evidence(doc, CONSORTIUM) is not None


MALFORMED_RECORDS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "format": (lambda d: d.__setitem__("format", "other/1"), "evidence.format"),
    "kind": (lambda d: d.__setitem__("kind", "gossip"), "evidence.kind"),
    "accused": (lambda d: d.__setitem__("accused", -1), "evidence.accused"),
    "no exhibits": (lambda d: d.__setitem__("exhibits", []), "evidence.exhibits: empty"),
    "exhibit block": (lambda d: d["exhibits"][0].__setitem__("block", 7), "exhibits[0].block"),
    "exhibit label": (lambda d: d["exhibits"][1].__setitem__("label", ""), "exhibits[1].label"),
    "source": (lambda d: d.__setitem__("source", None), "evidence.source"),
    "reason": (lambda d: d.__setitem__("reason", "r" * 1001), "evidence.reason"),
    "signature": (lambda d: d.__setitem__("signature", "zz"), "evidence.signature"),
    "height": (lambda d: d.__setitem__("height", 0), "evidence.height"),
    "missing reporter": (lambda d: d.pop("reporter"), "missing field 'reporter'"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED_RECORDS))
def test_malformed_records_are_named(chain: list[Block], name: str) -> None:
    record, _ = conflict_record(chain)
    doc = record.to_json()
    mutate, expected = MALFORMED_RECORDS[name]
    mutate(doc)
    with pytest.raises(EvidenceError, match=re.escape(expected)):
        evidence_from_json(doc)
    assert (verify_evidence(doc, CONSORTIUM) or "").startswith("malformed record")


def test_evidence_from_another_key_fails(chain: list[Block]) -> None:
    record, _ = conflict_record(chain)
    forged = dataclasses.replace(record, signature=SIGNERS[1].sign(record.signing_bytes()))
    assert "not valid for reporter 0" in (verify_evidence(forged, CONSORTIUM) or "")
    assert "not a consortium member" in (
        verify_evidence(dataclasses.replace(record, reporter=9), CONSORTIUM) or ""
    )


def test_conflict_needs_two_valid_certificates_for_different_batches(chain: list[Block]) -> None:
    text = block_exhibit_text(block_to_json(chain[4]))
    same = make_evidence(
        SIGNERS[0],
        kind=KIND_CONFLICT,
        height=5,
        reporter=0,
        accused=1,
        source="",
        reason="r",
        exhibits=[Exhibit("a", text), Exhibit("b", text)],
    )
    assert "same batch digest" in (verify_evidence(same, CONSORTIUM) or "")
    doc = block_to_json(fork_chain(chain, 5)[4])
    doc["certificate"][0]["signature"] = "00" * 64
    broken = make_evidence(
        SIGNERS[0],
        kind=KIND_CONFLICT,
        height=5,
        reporter=0,
        accused=1,
        source="",
        reason="r",
        exhibits=[Exhibit("a", block_exhibit_text(doc)), Exhibit("b", text)],
    )
    assert "exhibit 0 does not verify" in (verify_evidence(broken, CONSORTIUM) or "")


def test_invalid_block_evidence(chain: list[Block]) -> None:
    doc = block_to_json(chain[2])
    doc["txs"][0]["signature"] = "22" * 64

    def record(text: str) -> Any:
        return make_evidence(
            SIGNERS[2],
            kind=KIND_INVALID,
            height=3,
            reporter=2,
            accused=1,
            source="http://127.0.0.1:1",
            reason="bad block",
            exhibits=[Exhibit("served", text)],
        )

    assert verify_evidence(record(block_exhibit_text(doc)), CONSORTIUM) is None
    assert verify_evidence(record("{not json"), CONSORTIUM) is None  # malformed is invalid too
    honest = record(block_exhibit_text(block_to_json(chain[2])))
    assert "does not substantiate" in (verify_evidence(honest, CONSORTIUM) or "")


def test_load_evidence_file_formats(tmp_path: Path, chain: list[Block]) -> None:
    record, _ = conflict_record(chain)
    doc = record.to_json()
    forms = {
        "one.json": json.dumps(doc),
        "array.json": json.dumps([doc, doc]),
        "api.json": json.dumps({"count": 1, "evidence": [doc]}),
        "lines.jsonl": json.dumps(doc) + "\n\n" + json.dumps(doc) + "\n",
    }
    for name, text in forms.items():
        (tmp_path / name).write_text(text)
        docs = load_evidence_file(tmp_path / name)
        assert docs and all(verify_evidence(d, CONSORTIUM) is None for d in docs), name
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(EvidenceError, match="does not hold evidence"):
        load_evidence_file(tmp_path / "bad.json")
    with pytest.raises(EvidenceError, match="cannot read"):
        load_evidence_file(tmp_path / "missing.json")


def resigned(record: Any) -> Any:
    return dataclasses.replace(
        record, signature=SIGNERS[record.reporter].sign(record.signing_bytes())
    )


def test_audit_log_dedups_bounds_and_persists(tmp_path: Path, chain: list[Block]) -> None:
    path = tmp_path / "audit.sqlite"
    with AuditLog(path, max_evidence=2, max_events=3) as audit_log:
        records = [conflict_record(chain, h)[0] for h in (3, 4, 5)]
        assert audit_log.add_evidence(records[0])
        again = dataclasses.replace(records[0], observed_at_ms=1, reason="seen again")
        assert not audit_log.add_evidence(resigned(again))
        assert audit_log.add_evidence(records[1]) and audit_log.add_evidence(records[2])
        assert audit_log.evidence_count() == 2
        assert [d["height"] for d in audit_log.evidence(10)] == [5, 4]
        assert [d["height"] for d in audit_log.evidence_summaries(10)] == [5, 4]
        for i in range(5):
            audit_log.add_event("repaired", i, f"event {i}")
        assert [e.height for e in audit_log.events(10)] == [4, 3, 2]
        assert audit_log.quarantine(7, "bad bytes", b"\x01\x02")
        assert audit_log.event_counts() == {"repaired": 3}
    with AuditLog(path, read_only=True) as reopened:
        assert [(q.height, q.reason, q.data) for q in reopened.quarantined()] == [
            (7, "bad bytes", b"\x01\x02")
        ]
        assert all(verify_evidence(d, CONSORTIUM) is None for d in reopened.evidence(10))
