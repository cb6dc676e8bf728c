"""node/config: loading, validation (every error names the file and field), writing."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from consensus.config import ReplicaConfig
from node.config import (
    ClientEntry,
    ConfigError,
    NodeLimits,
    ReplicaEntry,
    load_config,
    make_node_config,
)
from node.configwrite import render_config, write_config

REPO = Path(__file__).resolve().parents[2]


def _key(i: int) -> bytes:
    return bytes([i + 1]) * 32


def _replicas(n: int = 4) -> list[ReplicaEntry]:
    return [ReplicaEntry(i, f"http://127.0.0.1:{7100 + i}", _key(i)) for i in range(n)]


def _good_toml(extra: str = "", *, node: str = "", replicas: int = 4) -> str:
    parts = [
        "[node]",
        "id = 1",
        "port = 7101",
        'data_dir = "data/node1"',
        'key_file = "keys/node1.key"',
        node,
        extra,
    ]
    for r in _replicas(replicas):
        parts += [
            "[[replicas]]",
            f"id = {r.id}",
            f'url = "{r.url}"',
            f'public_key = "{r.public_key.hex()}"',
        ]
    parts += ["[[clients]]", 'hospital = "hospital-0"', f'public_key = "{_key(50).hex()}"']
    return "\n".join(parts) + "\n"


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "node.toml"
    p.write_text(text)
    return p


def test_load_minimal_config_resolves_paths_and_defaults(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, _good_toml()))
    assert cfg.node_id == 1
    assert cfg.host == "127.0.0.1"
    assert cfg.data_dir == tmp_path.resolve() / "data/node1"
    assert cfg.key_file == tmp_path.resolve() / "keys/node1.key"
    assert cfg.consensus == ReplicaConfig(n=4, replica_id=1)
    assert cfg.limits == NodeLimits()
    assert cfg.peers == {
        0: "http://127.0.0.1:7100",
        2: "http://127.0.0.1:7102",
        3: "http://127.0.0.1:7103",
    }
    assert cfg.self_url == "http://127.0.0.1:7101"
    assert list(cfg.replica_publics) == [_key(i) for i in range(4)]
    assert cfg.client_keys() == {_key(50): "hospital-0"}
    assert cfg.operator_public_key is None


def test_overrides_are_applied(tmp_path: Path) -> None:
    extra = (
        "[consensus]\ncheckpoint_interval = 8\nwatermark_window = 32\n"
        "[limits]\nmax_body_bytes = 1024\n"
        f'[operator]\npublic_key = "{_key(90).hex()}"\n'
    )
    cfg = load_config(_write(tmp_path, _good_toml(extra)))
    assert cfg.consensus.checkpoint_interval == 8
    assert cfg.consensus.watermark_window == 32
    assert cfg.limits.max_body_bytes == 1024
    assert cfg.operator_public_key == _key(90)


def test_write_then_load_round_trips(tmp_path: Path) -> None:
    cfg = make_node_config(
        node_id=2,
        host="0.0.0.0",
        port=7102,
        data_dir=tmp_path / 'd ir\\with "quotes"',
        key_file=tmp_path / "k.key",
        replicas=_replicas(7),
        clients=[ClientEntry("hôpital-ü", _key(60)), ClientEntry("h1", _key(61))],
        operator_public_key=_key(99),
        consensus={"batch_timeout_ms": 5, "view_timeout_ms": 500},
        limits=NodeLimits(max_waiters=7),
        log_level="debug",
    )
    path = tmp_path / "sub" / "node2.toml"
    write_config(path, cfg)
    assert load_config(path) == cfg
    text = path.read_text()
    # Only overrides are written, so changing a default later reaches existing clusters.
    assert "batch_timeout_ms = 5" in text
    assert "checkpoint_interval" not in text
    assert "max_waiters = 7" in text
    assert "max_body_bytes" not in text


def test_defaults_toml_documents_every_key_with_the_compiled_default() -> None:
    doc = tomllib.loads((REPO / "configs" / "defaults.toml").read_text())
    consensus_defaults = {
        f.name: f.default
        for f in dataclasses.fields(ReplicaConfig)
        if f.name not in ("n", "replica_id")
    }
    assert doc["consensus"] == consensus_defaults
    assert doc["limits"] == dataclasses.asdict(NodeLimits())
    assert doc["node"] == {"host": "127.0.0.1", "log_level": "info", "vote_log_sync": "full"}


def _error(tmp_path: Path, text: str) -> ConfigError:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    return info.value


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        (_good_toml().replace("id = 1\n", "", 1), "node.id", "missing"),
        (_good_toml().replace("port = 7101", 'port = "7101"'), "node.port", "integer"),
        (_good_toml().replace("port = 7101", "port = 70000"), "node.port", "1..65535"),
        (_good_toml().replace("port = 7101", "port = true"), "node.port", "integer"),
        (_good_toml().replace("id = 1\n", "id = 9\n", 1), "node.id", "not a replica id"),
        (_good_toml(node="colour = 1"), "node.colour", "unknown key"),
        (_good_toml(node='log_level = "loud"'), "node.log_level", "one of"),
        (_good_toml("[consensus]\nn = 7\n"), "consensus.n", "unknown key"),
        (_good_toml("[consensus]\nwatermark_window = 100\n"), "consensus", "multiple"),
        (_good_toml("[consensus]\nmax_inflight = 0\n"), "consensus.max_inflight", "positive"),
        (_good_toml("[limits]\nmax_body_bytes = 0\n"), "limits.max_body_bytes", ">= 1"),
        (_good_toml("[limits]\nmax_body_byte = 5\n"), "limits.max_body_byte", "unknown key"),
        (
            _good_toml("[limits]\npeer_backoff_min_ms = 9000\n"),
            "limits.peer_backoff_min_ms",
            "<=",
        ),
        (_good_toml(replicas=3), "replicas", "at least 4"),
        (
            _good_toml().replace(f'"{_key(2).hex()}"', f'"{_key(1).hex()}"'),
            "replicas[2].public_key",
            "duplicates replicas[1]",
        ),
        (
            _good_toml().replace(f'"{_key(2).hex()}"', '"abcd"'),
            "replicas[2].public_key",
            "32 bytes",
        ),
        (
            _good_toml().replace(f'"{_key(2).hex()}"', '"zz"'),
            "replicas[2].public_key",
            "hex",
        ),
        (
            _good_toml().replace('"http://127.0.0.1:7103"', '"ftp://x:1"'),
            "replicas[3].url",
            "http(s)",
        ),
        (
            _good_toml().replace('"http://127.0.0.1:7103"', '"http://h"'),
            "replicas[3].url",
            "port",
        ),
        (_good_toml().replace("id = 3", "id = 5"), "replicas[3].id", "position 3"),
        (_good_toml("[operator]\npublic_key = 5\n"), "operator.public_key", "string"),
        ("clients = 5\n" + _good_toml().split("[[clients]]")[0], "clients", "array of tables"),
        (_good_toml("[mystery]\n"), "mystery", "unknown key"),
        ("[node\n", "file", "invalid TOML"),
    ],
)
def test_invalid_configs_name_file_and_field(
    tmp_path: Path, text: str, field: str, words: str
) -> None:
    err = _error(tmp_path, text)
    assert err.field == field
    assert words in err.problem


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")


def test_render_is_loadable_toml_with_escapes(tmp_path: Path) -> None:
    cfg = make_node_config(
        node_id=0,
        host="127.0.0.1",
        port=1,
        data_dir=Path("/tmp/a\tb\x7f"),
        key_file=Path("/k"),
        replicas=_replicas(4),
    )
    assert tomllib.loads(render_config(cfg))["node"]["data_dir"] == "/tmp/a\tb\x7f"
