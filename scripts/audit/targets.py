"""Which nodes to audit and which keys to verify their chains against."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from scripts.client import Consortium
from scripts.cluster import ClusterLayout
from scripts.output import CliError
from scripts.provision import load_node_config
from scripts.verify import consortium_from_config


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    url: str | None
    data_dir: Path | None
    """Where a node that does not answer is read from offline (cluster nodes only)."""


def cluster_targets(root: Path) -> tuple[list[Target], Consortium]:
    """Every node of the cluster in ``root``, and the keys from the first node's config."""
    layout = ClusterLayout(root)
    indices = layout.node_indices()
    if not indices:
        raise CliError(f"{layout.root}: no cluster here; give --nodes URL,URL,... instead")
    targets = []
    keys: Consortium | None = None
    for i in indices:
        path = layout.config_path(i)
        config = load_node_config(path)
        keys = keys or consortium_from_config(config, str(path))
        targets.append(Target(f"node{i}", config.self_url, config.data_dir))
    assert keys is not None
    return targets, keys


def url_targets(text: str) -> list[Target]:
    """The nodes of ``--nodes URL,URL,...``."""
    urls = [u.strip().rstrip("/") for u in text.split(",") if u.strip()]
    if not urls:
        raise CliError("--nodes needs at least one URL")
    for u in urls:
        if not u.startswith(("http://", "https://")):
            raise CliError(f"--nodes: {u!r} is not an http(s):// URL")
    return [Target(u, u, None) for u in urls]


def config_keys(path: Path) -> Consortium:
    """The consortium's keys from one node's config (``--config``)."""
    return consortium_from_config(load_node_config(path), str(path))
