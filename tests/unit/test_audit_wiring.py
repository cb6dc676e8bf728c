"""The node runs with its read path always and with the cross-audit only if configured:
``[audit] enabled`` in the config, the one place node/ wires node/audit in, and a node with
the audit off serving blocks and answering GET /audit with a JSON 404."""

from __future__ import annotations

import ast
import dataclasses
import socket
import tomllib
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from node.config import ConfigError, load_config
from node.configwrite import render_config
from node.ledger import Block
from node.runtime import STORE_FILE, Node
from tests.unit.helpers_audit import chain_of_ten, new_store, write_test_config
from tests.unit.helpers_ledger import REPLICA_KEYS, N

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_only_the_runtime_imports_the_audit() -> None:
    importers = []
    for path in sorted((REPO / "node").rglob("*.py")):
        if "audit" in path.relative_to(REPO / "node").parts[:1]:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            if any(n == "node.audit" or n.startswith("node.audit.") for n in names):
                importers.append(path.relative_to(REPO).as_posix())
    assert sorted(set(importers)) == ["node/runtime.py"]


def test_audit_is_on_by_default_and_can_be_turned_off(tmp_path: Path) -> None:
    path = tmp_path / "node0.toml"
    write_test_config(path, tmp_path / "data")
    config = load_config(path)
    assert config.audit_enabled is True
    assert "[audit]" not in render_config(config)
    off = dataclasses.replace(config, audit_enabled=False)
    path.write_text(render_config(off))
    assert load_config(path).audit_enabled is False
    path.write_text(render_config(config) + '\n[audit]\nenabled = "no"\n')
    with pytest.raises(ConfigError, match=r"audit\.enabled"):
        load_config(path)
    path.write_text(render_config(config) + "\n[audit]\ninterval_ms = 5\n")
    with pytest.raises(ConfigError, match=r"audit\.interval_ms"):
        load_config(path)
    doc = tomllib.loads((REPO / "configs" / "defaults.toml").read_text())
    assert doc["audit"] == {"enabled": True}


@pytest.mark.parametrize("enabled", [True, False])
async def test_a_node_serves_verified_blocks_with_or_without_the_audit(
    tmp_path: Path, enabled: bool
) -> None:
    chain: list[Block] = chain_of_ten()
    path = tmp_path / "node0.toml"
    write_test_config(path, tmp_path / "data", ports=[_free_port() for _ in range(N)])
    config = dataclasses.replace(load_config(path), audit_enabled=enabled, access_open=True)
    config.data_dir.mkdir(parents=True)
    new_store(config.data_dir / STORE_FILE, chain).close()
    node = Node(config, secret=REPLICA_KEYS[0][0])
    await node.start()
    try:
        assert node.reader is not None and (node.auditor is not None) is enabled
        async with TestClient(TestServer(node.app, host="127.0.0.1")) as client:
            resp = await client.get("/blocks/3")
            assert resp.status == 200 and (await resp.json())["hash"] == chain[2].block_hash.hex()
            resp = await client.get("/blocks?from=1&limit=20&txs=0")
            assert len((await resp.json())["blocks"]) == len(chain)
            for route in ("/audit", "/audit/evidence"):
                resp = await client.get(route)
                doc = await resp.json()
                if enabled:
                    assert resp.status == 200 and "evidence" in doc
                else:
                    assert resp.status == 404 and doc["error"] == "audit disabled"
    finally:
        await node.stop()
