"""scripts/audit/: `medchain audit` against in-process peers and stopped nodes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from node.ledger import (
    Block,
)
from scripts.audit import add_audit_parser
from tests.unit.helpers_audit import (
    FakePeer,
    RawEditor,
    chain_of_ten,
    conflict_record,
    flip,
    fork_chain,
    new_store,
    raw_of,
    set_commit,
    write_test_config,
)
from tests.unit.helpers_ledger import (
    N,
)


@pytest.fixture
def chain() -> list[Block]:
    return chain_of_ten()


# =============================================================================================
# medchain audit (scripts/audit/)


def run_cli(*argv: str) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="medchain")
    add_audit_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["audit", *argv])
    return int(args.func(args))


def test_cli_check_evidence(
    tmp_path: Path, chain: list[Block], capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "node0.toml"
    write_test_config(config, tmp_path / "data")
    record, _ = conflict_record(chain)
    good = tmp_path / "evidence.json"
    good.write_text(json.dumps({"count": 1, "evidence": [record.to_json()]}))
    assert run_cli("--check-evidence", str(good), "--config", str(config)) == 0
    assert "VALID" in capsys.readouterr().out
    doc = record.to_json()
    doc["height"] += 1
    bad = tmp_path / "tampered.json"
    bad.write_text(json.dumps(doc))
    assert run_cli("--check-evidence", str(bad), "--config", str(config), "--json") == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and "altered or forged" in out["records"][0]["problem"]
    assert run_cli("--check-evidence", str(tmp_path / "none.json"), "--config", str(config)) == 1


async def test_cli_audit_nodes(
    tmp_path: Path, chain: list[Block], capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "node0.toml"
    write_test_config(config, tmp_path / "data")
    async with FakePeer(chain) as a, FakePeer(chain) as b, FakePeer(chain[:6]) as behind:
        urls = ",".join(p.url for p in (a, b, behind))
        code = await asyncio.to_thread(run_cli, "--nodes", urls, "--config", str(config), "--json")
        out = json.loads(capsys.readouterr().out)
        assert code == 0 and out["ok"] and out["divergences"] == []
        assert [n["status"] for n in out["nodes"]] == ["agree", "agree", "lagging"]
        assert [n["agrees_through"] for n in out["nodes"]] == [10, 10, 6]
        assert out["nodes"][2]["lag"] == 4 and out["nodes"][2]["certificates_ok"] is True

        code = await asyncio.to_thread(run_cli, "--nodes", urls, "--config", str(config))
        assert code == 0 and "OK" in capsys.readouterr().out

    mutate = {5: set_commit("signature", "00" * 64)}
    async with (
        FakePeer(chain) as a,
        FakePeer(fork_chain(chain, 8)) as forked,
        FakePeer(chain, mutate=mutate) as liar,
        FakePeer(chain) as d,
    ):
        urls = ",".join(p.url for p in (a, forked, liar, d))
        code = await asyncio.to_thread(run_cli, "--nodes", urls, "--config", str(config), "--json")
        out = json.loads(capsys.readouterr().out)
        assert code == 1 and not out["ok"]
        statuses = [n["status"] for n in out["nodes"]]
        assert statuses == ["agree", "diverged", "invalid", "agree"]
        assert out["nodes"][1]["agrees_through"] == 7
        assert out["nodes"][2]["first_bad_height"] == 5
        assert [dv["height"] for dv in out["divergences"]] == [8, 9, 10]


async def test_cli_checks_payloads_of_live_nodes(
    tmp_path: Path, chain: list[Block], capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "node0.toml"
    write_test_config(config, tmp_path / "data")

    def corrupt_payload(doc: dict[str, Any]) -> None:
        if "payload" in doc["txs"][0]:  # only when payloads are asked for, as a node would
            doc["txs"][0]["payload"] = "00"

    async with FakePeer(chain) as a, FakePeer(chain, mutate={3: corrupt_payload}) as b:
        urls = f"{a.url},{b.url}"
        code = await asyncio.to_thread(run_cli, "--nodes", urls, "--config", str(config), "--json")
        out = json.loads(capsys.readouterr().out)
    assert code == 1
    assert out["nodes"][1]["status"] == "invalid"
    assert "payload hash mismatch" in out["nodes"][1]["bad_reason"]


def test_cli_audits_stopped_nodes_offline(
    tmp_path: Path, chain: list[Block], capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "cluster"
    ports = [9, 10, 11, 12]  # nothing listens there: every node is read from its store
    lengths = [10, 10, 10, 7]
    for i in range(N):
        data = root / "data" / f"node{i}"
        data.mkdir(parents=True)
        write_test_config(root / f"node{i}.toml", data, node_id=i, ports=ports)
        new_store(data / "chain.sqlite", chain[: lengths[i]]).close()
    code = run_cli("--dir", str(root), "--json", "--timeout", "1")
    out = json.loads(capsys.readouterr().out)
    assert code == 0, out
    assert [n["source"] for n in out["nodes"]] == ["offline"] * 4
    assert [n["status"] for n in out["nodes"]] == ["agree", "agree", "agree", "lagging"]

    editor = RawEditor(root / "data" / "node2" / "chain.sqlite")
    editor.write(4, flip(raw_of(root / "data" / "node2" / "chain.sqlite", 4), 60))
    editor.close()
    code = run_cli("--dir", str(root), "--json", "--timeout", "1")
    out = json.loads(capsys.readouterr().out)
    assert code == 1
    assert out["nodes"][2]["status"] == "invalid" and out["nodes"][2]["first_bad_height"] == 4


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("--dir", str(tmp_path / "nothing")) == 1
    assert "no cluster here" in capsys.readouterr().err
    assert run_cli("--nodes", "ftp://x") == 1
    assert "not an http" in capsys.readouterr().err
