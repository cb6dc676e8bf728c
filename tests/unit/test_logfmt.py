"""Structured logs: ``--log-format json`` writes one JSON object per line with the node id, and
the view and seq of the line (given with the call, else the replica's current ones)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from node.configwrite import write_config
from node.logfmt import JsonFormatter
from node.main import build_parser
from tests.unit.test_api import make_configs


def _record(msg: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("medchain.node", logging.INFO, __file__, 1, msg, (), None)
    for k, v in extra.items():
        setattr(record, k, v)
    return record


def test_a_json_line_carries_node_view_and_seq() -> None:
    fmt = JsonFormatter(node_id=2)
    fmt.position = lambda: (3, 41)
    doc = json.loads(fmt.format(_record("view change: moving to view 3")))
    assert doc["node"] == 2 and (doc["view"], doc["seq"]) == (3, 41)
    assert doc["level"] == "info" and doc["logger"] == "medchain.node"
    assert doc["msg"] == "view change: moving to view 3"
    assert doc["ts"].endswith("Z")


def test_a_line_about_a_given_slot_names_that_slot() -> None:
    fmt = JsonFormatter(node_id=0)
    fmt.position = lambda: (1, 10)
    doc = json.loads(fmt.format(_record("dropped", view=1, seq=12)))
    assert (doc["view"], doc["seq"]) == (1, 12)


def test_an_exception_stays_inside_its_one_line() -> None:
    fmt = JsonFormatter(node_id=0)
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        record = logging.LogRecord(
            "medchain.node", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    line = fmt.format(record)
    assert "\n" not in line
    assert "ValueError" in json.loads(line)["exc"]


def test_the_node_entry_point_takes_a_log_format() -> None:
    assert build_parser().parse_args(["--config", "x", "--log-format", "json"]).log_format == "json"
    assert build_parser().parse_args(["--config", "x"]).log_format == "text"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--config", "x", "--log-format", "xml"])


@pytest.mark.integration
def test_a_node_process_logs_json_lines(tmp_path: Path) -> None:
    config = make_configs(tmp_path)[0]
    path = tmp_path / "node0.toml"
    write_config(path, config)
    proc = subprocess.Popen(
        [sys.executable, "-m", "node.main", "--config", str(path), "--log-format", "json"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, "node exited during startup"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{config.port}/healthz", timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, "node did not answer /healthz"
                time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0, err.decode()
    docs = [json.loads(line) for line in err.decode().splitlines() if line.strip()]
    assert docs and all(d["node"] == 0 and "view" in d and "seq" in d for d in docs)
    starting = next(d for d in docs if d["msg"].startswith("starting"))
    assert (starting["view"], starting["seq"]) == (0, 0)
    assert any(d["msg"] == "stopped" for d in docs)
