"""scripts/cli and the commands it registers: init, argument handling, records, offline
verification and the submit path.

Nothing here starts a node process (tests/integration does): verification runs over a SQLite
store and served-JSON blocks built from fixed-seed keys, and the submit client's retry paths
run against a scripted in-process HTTP server.
"""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from node import codec, ledger
from node.config import (
    ClientEntry,
    ConfigError,
    ReplicaEntry,
    load_config,
    make_node_config,
)
from node.configwrite import write_config
from node.crypto import load_key
from node.store import Store
from scripts import cli, client, provision, submit, verify
from scripts.cluster import ClusterLayout
from scripts.output import CliError
from tests.unit.helpers_ledger import CLIENT_KEYS, CONSORTIUM, HOSPITALS, make_chain

# ---------------------------------------------------------------------------------------------
# init


def test_init_writes_loadable_configs_and_owner_only_keys(tmp_path: Path) -> None:
    root = tmp_path / "c"
    result = provision.init_cluster(root, 4)
    layout = ClusterLayout(root)
    assert [i for i, _, _ in result.nodes] == [0, 1, 2, 3]

    configs = [load_config(layout.config_path(i)) for i in range(4)]
    ports = {c.port for c in configs}
    assert len(ports) == 4
    for i, config in enumerate(configs):
        assert config.node_id == i and config.n == 4 and config.host == "127.0.0.1"
        assert config.self_url == f"http://127.0.0.1:{config.port}"
        assert config.replicas == configs[0].replicas  # one consortium, one view of it
        _, public = load_key(config.key_file)
        assert public == config.replicas[i].public_key
        assert config.data_dir == layout.data_dir(i)
    clients = {c.hospital: c.public_key for c in configs[0].clients}
    assert list(clients) == [f"hospital-{i}" for i in range(4)]
    for hospital, public in clients.items():
        assert load_key(layout.client_key(hospital))[1] == public
    assert configs[0].operator_public_key == load_key(layout.operator_key)[1]

    assert stat.S_IMODE(layout.keys_dir.stat().st_mode) == 0o700
    for key in layout.keys_dir.iterdir():
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    # Paths are relative to the cluster dir, so it can be moved as a whole.
    assert 'data_dir = "data/node0"' in layout.config_path(0).read_text()


def test_init_refuses_an_existing_cluster_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "c"
    assert cli.main(["init", "--nodes", "4", "--dir", str(root)]) == 0
    layout = ClusterLayout(root)
    old_key = layout.node_key(0).read_bytes()
    layout.data_dir(0).mkdir(parents=True)
    (layout.data_dir(0) / "chain.sqlite3").write_bytes(b"old chain")
    capsys.readouterr()

    assert cli.main(["init", "--nodes", "4", "--dir", str(root)]) == 1
    assert "already holds a cluster (4 nodes); use --force" in capsys.readouterr().err
    assert layout.node_key(0).read_bytes() == old_key

    assert cli.main(["init", "--nodes", "5", "--dir", str(root), "--force", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [n["id"] for n in doc["nodes"]] == [0, 1, 2, 3, 4]
    assert layout.node_key(0).read_bytes() != old_key
    assert not layout.data_dir(0).exists()  # the old chain belonged to the old keys


def test_init_rejects_too_few_nodes_and_busy_ports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["init", "--nodes", "3", "--dir", str(tmp_path / "a")]) == 1
    assert "--nodes must be in 4..64" in capsys.readouterr().err

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = ["init", "--nodes", "4", "--dir", str(tmp_path / "b"), "--base-port", str(port)]
        assert cli.main(args) == 1
    assert f"port {port} on 127.0.0.1 is not free" in capsys.readouterr().err
    assert not ClusterLayout(tmp_path / "b").exists()


def test_init_validates_everything_before_writing(tmp_path: Path) -> None:
    root = tmp_path / "c"
    with pytest.raises(ConfigError, match="watermark_window"):
        provision.init_cluster(root, 4, consensus={"watermark_window": 33})
    assert not root.exists()

    provision.init_cluster(root, 4, consensus={"checkpoint_interval": 8, "watermark_window": 32})
    assert load_config(ClusterLayout(root).config_path(2)).consensus.checkpoint_interval == 8
    before = ClusterLayout(root).node_key(0).read_bytes()
    with pytest.raises(ConfigError):
        provision.init_cluster(root, 4, force=True, consensus={"no_such_field": 1})
    assert ClusterLayout(root).node_key(0).read_bytes() == before  # old cluster intact


def test_init_with_base_port_uses_consecutive_ports(tmp_path: Path) -> None:
    for base in provision.free_ports(20):  # find 4 consecutive free ports (bounded tries)
        try:
            provision.check_ports_free(range(base, base + 4))
        except CliError:
            continue
        break
    else:
        pytest.skip("no 4 consecutive free ports found")
    provision.init_cluster(tmp_path / "c", 4, base_port=base)
    layout = ClusterLayout(tmp_path / "c")
    assert [load_config(layout.config_path(i)).port for i in range(4)] == [
        base + i for i in range(4)
    ]


def test_free_ports_are_distinct_bindable_and_outside_the_ephemeral_range() -> None:
    ports = provision.free_ports(8)
    assert len(set(ports)) == 8
    provision.check_ports_free(ports)
    low = provision.ephemeral_low()
    if low - provision.PORT_POOL_START >= 1000:
        assert all(provision.PORT_POOL_START <= p < low for p in ports), (ports, low)


# ---------------------------------------------------------------------------------------------
# arguments and records


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["init"],
        ["node"],
        ["cluster"],
        ["cluster", "up"],
        ["cluster", "status"],
        ["cluster", "down"],
        ["cluster", "kill-node"],
        ["submit"],
        ["verify"],
        ["audit"],
        ["fault"],
        ["scenario"],
        ["bench"],
    ],
)
def test_every_command_has_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--help"])
    assert exit_info.value.code == 0
    assert "usage: medchain" in capsys.readouterr().out


def test_bad_usage_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["submit", "--data", "x", "--count", "3"],  # mutually exclusive
        ["cluster", "kill-node", "1", "--signal", "SIGNOPE"],
        ["cluster", "up", "--timeout", "-1"],
        ["verify", "--node", "http://x", "--db", "f"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 2, argv
    assert "unknown signal 'SIGNOPE'" in capsys.readouterr().err


def test_submit_needs_a_whole_record_or_a_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    provision.init_cluster(tmp_path / "c", 4)
    assert cli.main(["submit", "--dir", str(tmp_path / "c"), "--patient", "p-1"]) == 1
    assert "--patient, --type and --data" in capsys.readouterr().err
    assert cli.main(["submit", "--dir", str(tmp_path / "c"), "--count", "0"]) == 1
    assert "--count must be at least 1" in capsys.readouterr().err
    assert cli.main(["submit", "--dir", str(tmp_path / "c"), "--node-index", "9"]) == 1
    assert "no node 9" in capsys.readouterr().err
    assert cli.main(["submit", "--dir", str(tmp_path / "none"), "--count", "1"]) == 1
    assert "no cluster here" in capsys.readouterr().err


def test_parse_signal_accepts_names_and_numbers() -> None:
    assert cli.parse_signal("kill") == 9
    assert cli.parse_signal("SIGSTOP") == signal.SIGSTOP
    assert cli.parse_signal("15") == 15


def test_synthetic_records_sign_into_valid_distinct_transactions() -> None:
    secret, public = CLIENT_KEYS[0]
    records = list(submit.synthetic_records(50))
    assert len({r.payload for r in records}) == 50
    assert len({r.record_type for r in records}) > 1
    target = submit.SubmitTarget(url="http://unused", client_secret=secret, hospital=HOSPITALS[0])
    envs = submit.build_envelopes(target, records)
    registry = ledger.ClientRegistry({public: HOSPITALS[0]})
    assert all(ledger.check_tx(env, registry) is None for env in envs)
    assert len({env.tx_id for env in envs}) == 50

    fixed = list(submit.synthetic_records(3, patient="p-7", record_type="lab-result"))
    assert {(r.patient, r.record_type) for r in fixed} == {("p-7", "lab-result")}


def test_read_data_arg(tmp_path: Path) -> None:
    assert submit.read_data_arg("hb 13.5 g/dL") == b"hb 13.5 g/dL"
    path = tmp_path / "scan.bin"
    path.write_bytes(b"\x00\x01binary")
    assert submit.read_data_arg(f"@{path}") == b"\x00\x01binary"
    with pytest.raises(CliError, match="cannot read --data file"):
        submit.read_data_arg(f"@{tmp_path / 'missing'}")
    path.write_bytes(b"x" * (submit.MAX_DATA_BYTES + 1))
    with pytest.raises(CliError, match="limit"):
        submit.read_data_arg(f"@{path}")


def test_invalid_record_is_a_clear_error() -> None:
    target = submit.SubmitTarget("http://unused", CLIENT_KEYS[0][0], HOSPITALS[0])
    with pytest.raises(CliError, match="invalid record: patient is empty"):
        submit.build_envelopes(target, [submit.Record(patient="", record_type="x", payload=b"")])


# ---------------------------------------------------------------------------------------------
# verification


def _write_consortium_config(path: Path) -> Path:
    replicas = [
        ReplicaEntry(i, f"http://127.0.0.1:{7100 + i}", pk) for i, pk in enumerate(CONSORTIUM)
    ]
    clients = [ClientEntry(h, CLIENT_KEYS[i][1]) for i, h in enumerate(HOSPITALS)]
    config = make_node_config(
        node_id=0,
        host="127.0.0.1",
        port=7100,
        data_dir=Path("data"),
        key_file=Path("node0.key"),
        replicas=replicas,
        clients=clients,
    )
    write_config(path, config)
    return path


@pytest.fixture
def chain_db(tmp_path: Path) -> Iterator[tuple[Path, Path, list[ledger.Block]]]:
    blocks = make_chain(6, txs_per_block=3, null_every=4)
    db = tmp_path / "chain.sqlite3"
    with Store(db) as store:
        store.append_blocks(blocks)
    yield db, _write_consortium_config(tmp_path / "node0.toml"), blocks


def _verify_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = cli.main(["verify", *argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_verify_db_accepts_a_valid_chain(
    chain_db: tuple[Path, Path, list[ledger.Block]], capsys: pytest.CaptureFixture[str]
) -> None:
    db, config, blocks = chain_db
    code, report = _verify_json(capsys, "--db", str(db), "--config", str(config))
    assert code == 0
    assert report["ok"] is True
    assert report["height"] == 6
    assert report["head_hash"] == blocks[-1].block_hash.hex()


def _rewrite_block(db: Path, height: int, data: bytes) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE blocks SET data = ? WHERE height = ?", (data, height))


def test_verify_db_names_the_first_tampered_block(
    chain_db: tuple[Path, Path, list[ledger.Block]], capsys: pytest.CaptureFixture[str]
) -> None:
    db, config, blocks = chain_db
    victim = blocks[2]
    env = victim.txs[1]
    forged = ledger.TxEnvelope(env.tx, env.payload + b"!")
    tampered = ledger.Block(
        **{f: getattr(victim, f) for f in ledger.Block.__dataclass_fields__}
        | {"txs": (victim.txs[0], forged, *victim.txs[2:])}
    )
    _rewrite_block(db, 3, ledger.encode_block(tampered))
    code, report = _verify_json(capsys, "--db", str(db), "--config", str(config))
    assert code == 1
    assert (report["ok"], report["height"], report["first_bad_height"]) == (False, 2, 3)
    assert "tx 1" in report["reason"] and "payload hash mismatch" in report["reason"]
    assert report["head_hash"] == blocks[1].block_hash.hex()


def test_verify_db_reports_an_undecodable_block(
    chain_db: tuple[Path, Path, list[ledger.Block]], capsys: pytest.CaptureFixture[str]
) -> None:
    db, config, _ = chain_db
    _rewrite_block(db, 5, b"\x93garbage")
    code, report = _verify_json(capsys, "--db", str(db), "--config", str(config))
    assert code == 1
    assert (report["height"], report["first_bad_height"]) == (4, 5)


def test_verify_db_against_other_keys_fails_at_block_1(
    chain_db: tuple[Path, Path, list[ledger.Block]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db, _, _ = chain_db
    provision.init_cluster(tmp_path / "other", 4)  # a different consortium
    other = ClusterLayout(tmp_path / "other").config_path(0)
    code, report = _verify_json(capsys, "--db", str(db), "--config", str(other))
    assert code == 1
    assert report["first_bad_height"] == 1
    assert "signature" in report["reason"]


def test_verify_needs_keys_and_an_existing_db(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write_consortium_config(tmp_path / "node0.toml")
    assert cli.main(["verify", "--db", str(tmp_path / "x.sqlite3")]) == 1
    assert "--db needs --config" in capsys.readouterr().err
    assert cli.main(["verify", "--db", str(tmp_path / "x.sqlite3"), "--config", str(config)]) == 1
    assert "no database at" in capsys.readouterr().err
    assert not (tmp_path / "x.sqlite3").exists()  # verify never creates a store


def test_block_json_round_trip() -> None:
    for block in make_chain(5, txs_per_block=2, null_every=3):
        doc = json.loads(json.dumps(ledger.block_to_json(block, include_payload=True)))
        assert ledger.block_from_json(doc) == block


def test_block_from_json_is_strict() -> None:
    block = make_chain(1)[0]
    doc = ledger.block_to_json(block, include_payload=True)
    no_payload = ledger.block_to_json(block, include_payload=False)
    with pytest.raises(ledger.BlockJsonError, match="without its payload"):
        ledger.block_from_json(no_payload)
    wrong_id = json.loads(json.dumps(doc))
    wrong_id["txs"][0]["tx_id"] = "00" * 32
    with pytest.raises(ValueError, match="does not match"):
        ledger.block_from_json(wrong_id)
    for field, value in (("height", "1"), ("hash", "zz"), ("prev_hash", "00")):
        bad = {**doc, field: value}
        with pytest.raises(ledger.BlockJsonError):
            ledger.block_from_json(bad)
    with pytest.raises(ledger.BlockJsonError, match="missing field"):
        ledger.block_from_json({k: v for k, v in doc.items() if k != "certificate"})


def test_verify_blocks_counts_an_unservable_block_as_the_first_bad_one() -> None:
    blocks = make_chain(4)
    registry = ledger.ClientRegistry({pk: HOSPITALS[i] for i, (_, pk) in enumerate(CLIENT_KEYS)})
    keys = client.Consortium(tuple(CONSORTIUM), registry, source="test")

    def served() -> Iterator[ledger.Block]:
        yield from blocks[:2]
        raise verify.FetchError(3, "node served no block at height 3")

    result = verify.verify_blocks("node", served(), keys)
    assert (result.ok, result.height, result.first_bad_height) == (False, 2, 3)
    assert result.head_hash == blocks[1].block_hash.hex()
    assert verify.verify_blocks("node", iter(blocks), keys).ok


# ---------------------------------------------------------------------------------------------
# the submit client against a scripted server


class ScriptedNode:
    """POST /tx and GET /tx/{id} answering from a script, recording what it was sent."""

    def __init__(self, post_script: list[str], unknown_first: int = 0) -> None:
        self.post_script = post_script
        self.posts: list[int] = []
        self.accepted: dict[str, int] = {}
        self.unknown_left = unknown_first
        self.height = 0

    async def post_tx(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/msgpack"
        items = codec.unpack(await request.read())
        assert isinstance(items, tuple)
        self.posts.append(len(items))
        action = self.post_script.pop(0) if self.post_script else "accept"
        if action == "503":
            return web.json_response({"error": "overloaded"}, status=503)
        if action == "422":
            return web.json_response(
                {"error": "no transaction accepted", "detail": "bad"}, status=422
            )
        envs = [ledger.decode_tx(raw) for raw in items]
        refused = 1 if action == "refuse-first" else 0
        self.height += 1
        for env in envs[refused:]:
            self.accepted[env.tx_id.hex()] = self.height
        return web.json_response(
            {
                "accepted": [env.tx_id.hex() for env in envs[refused:]],
                "rejected": [{"index": 0, "error": "mempool full"}] if refused else [],
            },
            status=202,
        )

    async def get_tx(self, request: web.Request) -> web.Response:
        tx_id = request.match_info["tx_id"]
        assert int(request.query["wait_ms"]) > 0
        if self.unknown_left:
            self.unknown_left -= 1
            self.accepted.pop(tx_id, None)  # "restarted": forgot its mempool
            return web.json_response({"error": "unknown transaction"}, status=404)
        if tx_id not in self.accepted:
            return web.json_response({"error": "unknown transaction"}, status=404)
        return web.json_response(
            {"tx_id": tx_id, "status": "committed", "height": self.accepted[tx_id]}
        )


async def _serve(node: ScriptedNode) -> TestServer:
    app = web.Application()
    app.router.add_post("/tx", node.post_tx)
    app.router.add_get("/tx/{tx_id}", node.get_tx)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    fast = client.RetryPolicy(backoff_min_s=0.001, backoff_max_s=0.01)
    monkeypatch.setattr(submit, "SUBMIT_RETRY", fast)


def _target(server: TestServer) -> submit.SubmitTarget:
    return submit.SubmitTarget(
        str(server.make_url("")).rstrip("/"), CLIENT_KEYS[0][0], HOSPITALS[0]
    )


async def test_submit_retries_overload_and_refusals_then_waits() -> None:
    node = ScriptedNode(["503", "refuse-first", "accept"], unknown_first=1)
    server = await _serve(node)
    try:
        progress: list[tuple[str, int]] = []
        records = list(submit.synthetic_records(5))
        receipts = await submit.submit_records(
            _target(server),
            records,
            wait=True,
            timeout=30,
            batch_size=3,
            on_progress=lambda phase, n: progress.append((phase, n)),
        )
    finally:
        await server.close()
    # batch 1 (3 txs): 503, then 2 of 3 accepted, then the refused one alone; batch 2: 2 txs;
    # then one tx resubmitted because the node said 404 while we waited.
    assert node.posts == [3, 3, 1, 2, 1]
    assert len(receipts) == 5 and all(r.height is not None for r in receipts)
    assert {r.tx_id for r in receipts} == set(node.accepted)
    assert sum(n for phase, n in progress if phase == "sent") == 5
    assert sum(n for phase, n in progress if phase == "committed") == 5


async def test_submit_without_wait_reports_no_heights() -> None:
    node = ScriptedNode([])
    server = await _serve(node)
    target = _target(server)
    try:
        receipts = await submit.submit_records(
            target, list(submit.synthetic_records(4)), wait=False
        )
    finally:
        await server.close()
    assert [r.height for r in receipts] == [None] * 4
    assert receipts[0].node == target.url
    assert len(node.accepted) == 4


async def test_submit_gives_up_on_a_refusal_and_after_bounded_retries() -> None:
    node = ScriptedNode(["422"])
    server = await _serve(node)
    try:
        with pytest.raises(CliError, match=r"refused the transactions \(422\).*bad"):
            await submit.submit_records(
                _target(server), list(submit.synthetic_records(2)), wait=False
            )
        node.post_script = ["503"] * 100
        with pytest.raises(CliError, match="not accepted after"):
            await submit.submit_records(
                _target(server), list(submit.synthetic_records(2)), wait=False
            )
        assert len(node.posts) == 1 + client.RetryPolicy().attempts
    finally:
        await server.close()


async def test_submit_to_a_dead_node_fails_after_bounded_retries() -> None:
    port = provision.free_ports(1)[0]
    target = submit.SubmitTarget(f"http://127.0.0.1:{port}", CLIENT_KEYS[0][0], HOSPITALS[0])
    with pytest.raises(CliError, match="not accepted after"):
        await submit.submit_records(
            target, list(submit.synthetic_records(1)), wait=False, timeout=30
        )


def test_submit_key_must_be_private(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    provision.init_cluster(tmp_path / "c", 4)
    key = ClusterLayout(tmp_path / "c").client_key("hospital-0")
    key.chmod(0o644)
    assert cli.main(["submit", "--dir", str(tmp_path / "c"), "--count", "1"]) == 1
    assert "chmod 600" in capsys.readouterr().err
