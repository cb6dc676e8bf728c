"""Writing a ``NodeConfig`` back as the TOML that ``node.config.load_config`` reads."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

from consensus.config import ReplicaConfig
from node.config import DERIVED_CONSENSUS_FIELDS, NodeConfig, NodeLimits


def render_config(config: NodeConfig) -> str:
    """TOML text for ``config``; only values that differ from the defaults are written."""
    lines = [
        "# medchain node config (written by `medchain init`; see configs/defaults.toml)",
        "[node]",
        f"id = {config.node_id}",
        f"host = {_toml_str(config.host)}",
        f"port = {config.port}",
        f"data_dir = {_toml_str(str(config.data_dir))}",
        f"key_file = {_toml_str(str(config.key_file))}",
    ]
    if config.log_level != "info":
        lines.append(f"log_level = {_toml_str(config.log_level)}")
    if config.vote_log_sync != "full":
        lines.append(f"vote_log_sync = {_toml_str(config.vote_log_sync)}")
    if config.cluster_id:
        lines += ["", "[cluster]", f"id = {_toml_str(config.cluster_id)}"]
    if config.tls.enabled:
        lines += ["", "[tls]", "enabled = true"]
        for name in ("ca_file", "cert_file", "key_file"):
            lines.append(f"{name} = {_toml_str(str(getattr(config.tls, name)))}")
    if config.access_open:
        lines += [
            "",
            "# Anyone who can reach this node may read every record's metadata: a dev cluster.",
            "[access]",
            "open = true",
        ]
    lines += _overrides_table(
        "consensus", config.consensus, ReplicaConfig(n=config.n, replica_id=0)
    )
    lines += _overrides_table("limits", config.limits, NodeLimits())
    for r in config.replicas:
        lines += [
            "",
            "[[replicas]]",
            f"id = {r.id}",
            f"url = {_toml_str(r.url)}",
            f'public_key = "{r.public_key.hex()}"',
        ]
    for c in config.clients:
        lines += [
            "",
            "[[clients]]",
            f"hospital = {_toml_str(c.hospital)}",
            f'public_key = "{c.public_key.hex()}"',
        ]
    if config.operator_public_key is not None:
        lines += ["", "[operator]", f'public_key = "{config.operator_public_key.hex()}"']
    if config.faults.enabled:
        lines += ["", "[faults]", "enabled = true"]
        if config.faults.seed is not None:
            lines.append(f"seed = {config.faults.seed}")
    if not config.audit_enabled:
        lines += ["", "[audit]", "enabled = false"]
    return "\n".join(lines) + "\n"


def write_config(path: str | os.PathLike[str], config: NodeConfig) -> None:
    """Atomically write ``config`` as TOML to ``path`` (temp file + fsync + rename)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    text = render_config(config).encode("utf-8")
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _overrides_table(name: str, value: object, default: object) -> list[str]:
    skip = DERIVED_CONSENSUS_FIELDS if name == "consensus" else frozenset()
    out = [
        f"{f.name} = {getattr(value, f.name)}"
        for f in dataclasses.fields(value)  # type: ignore[arg-type]
        if f.name not in skip and getattr(value, f.name) != getattr(default, f.name)
    ]
    return ["", f"[{name}]", *out] if out else []


def _toml_str(s: str) -> str:
    """A TOML basic string: escape backslash, quote and every control character."""
    out = ['"']
    for ch in s:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


__all__ = ["render_config", "write_config"]
