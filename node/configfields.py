"""Typed accessors for the node's TOML tables: each names the field it reads in its error."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

PUBLIC_KEY_BYTES = 32
_MAX_PORT = 65_535


class ConfigError(ValueError):
    """A config problem, naming the file (when known), the field and what is wrong with it."""

    def __init__(self, field: str, problem: str, source: str | None = None) -> None:
        self.field = field
        self.problem = problem
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{field}: {problem}")

    def with_source(self, source: str) -> ConfigError:
        return ConfigError(self.field, self.problem, source)


def sub_table(data: Mapping[str, Any], key: str, *, required: bool) -> Mapping[str, Any]:
    value = data.get(key)
    if value is None:
        if required:
            raise ConfigError(key, "missing table")
        return {}
    if not isinstance(value, dict):
        raise ConfigError(key, f"must be a table ([{key}]), got {type(value).__name__}")
    return value


def table_array(data: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ConfigError(key, f"must be an array of tables ([[{key}]])")
    return value


def only_keys(where: str, table: Mapping[str, Any], allowed: set[str]) -> None:
    for k in table:
        if k not in allowed:
            name = f"{where}.{k}" if where else k
            raise ConfigError(name, f"unknown key (allowed: {', '.join(sorted(allowed))})")


def int_field(
    table: Mapping[str, Any], where: str, key: str, *, required: bool = False, default: int = 0
) -> int:
    if key not in table:
        if required:
            raise ConfigError(f"{where}.{key}", "missing")
        return default
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}.{key}", f"must be an integer, got {value!r}")
    return value


def str_field(
    table: Mapping[str, Any], where: str, key: str, *, required: bool = False, default: str = ""
) -> str:
    if key not in table:
        if required:
            raise ConfigError(f"{where}.{key}", "missing")
        return default
    value = table[key]
    if not isinstance(value, str):
        raise ConfigError(f"{where}.{key}", f"must be a string, got {value!r}")
    return value


def path_field(table: Mapping[str, Any], where: str, key: str, base_dir: Path) -> Path:
    raw = str_field(table, where, key, required=True)
    if not raw:
        raise ConfigError(f"{where}.{key}", "must not be empty")
    p = Path(raw).expanduser()
    return p if p.is_absolute() else base_dir / p


def hex_key(table: Mapping[str, Any], where: str, key: str) -> bytes:
    raw = str_field(table, where, key, required=True)
    try:
        value = bytes.fromhex(raw)
    except ValueError as e:
        raise ConfigError(f"{where}.{key}", "not valid hex") from e
    check_key(f"{where}.{key}", value)
    return value


def check_key(name: str, value: bytes) -> None:
    if len(value) != PUBLIC_KEY_BYTES:
        raise ConfigError(
            name, f"must be {PUBLIC_KEY_BYTES} bytes ({2 * PUBLIC_KEY_BYTES} hex), got {len(value)}"
        )


def check_port(name: str, port: int) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= _MAX_PORT:
        raise ConfigError(name, f"must be an integer in 1..{_MAX_PORT}, got {port!r}")


def check_url(name: str, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(name, f"must be an http(s)://host:port URL, got {url!r}")
    try:
        port = parts.port
    except ValueError as e:
        raise ConfigError(name, f"bad port in {url!r}") from e
    if port is None:
        raise ConfigError(name, f"must name a port explicitly, got {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(name, f"must be a base URL without path or query, got {url!r}")
