"""The scenario runner turns on fault injection through node.config, not by editing TOML."""

from __future__ import annotations

import tomllib
from pathlib import Path

from node.config import ClientEntry, ReplicaEntry, load_config, make_node_config
from node.configwrite import write_config
from node.crypto import generate_keypair
from scripts.scenario import enable_faults


def _write_init_style_config(root: Path) -> Path:
    """A node config as init writes it: paths relative to the cluster directory."""
    replicas = [
        ReplicaEntry(i, f"http://127.0.0.1:{7100 + i}", generate_keypair(bytes([i + 1]) * 32)[1])
        for i in range(4)
    ]
    config = make_node_config(
        node_id=0,
        host="127.0.0.1",
        port=7100,
        data_dir=Path("data/node0"),
        key_file=Path("keys/node0.key"),
        replicas=replicas,
        clients=[ClientEntry("hospital-0", generate_keypair(b"\x09" * 32)[1])],
        consensus={"max_batch_txs": 100},
    )
    path = root / "node0.toml"
    write_config(path, config)
    return path


def test_enable_faults_sets_the_table_and_keeps_the_rest(tmp_path: Path) -> None:
    path = _write_init_style_config(tmp_path)
    before = load_config(path)
    enable_faults(path, seed=7)
    after = load_config(path)
    assert (after.faults.enabled, after.faults.seed) == (True, 7)
    assert after.consensus == before.consensus
    assert (after.replicas, after.clients) == (before.replicas, before.clients)
    node = tomllib.loads(path.read_text())["node"]
    assert (node["data_dir"], node["key_file"]) == ("data/node0", "keys/node0.key")


def test_enable_faults_leaves_an_enabled_config_alone(tmp_path: Path) -> None:
    path = _write_init_style_config(tmp_path)
    enable_faults(path, seed=7)
    text = path.read_text()
    enable_faults(path, seed=8)
    assert path.read_text() == text
