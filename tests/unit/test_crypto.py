from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from node.crypto import (
    KeyFileError,
    NodeCrypto,
    Signer,
    generate_keypair,
    load_key,
    public_key_from_hex,
    public_key_hex,
    public_key_of,
    save_key,
    sign,
    verify,
)

SEEDS = [bytes([i]) * 32 for i in range(4)]
KEYS = [generate_keypair(s) for s in SEEDS]
PUBLICS = [pub for _, pub in KEYS]


def test_fixed_seed_gives_fixed_key() -> None:
    secret, public = generate_keypair(bytes(32))
    assert secret == bytes(32)
    # RFC 8032 / libsodium: the all-zero seed's public key.
    assert public.hex() == "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29"
    assert generate_keypair(SEEDS[1]) == KEYS[1]
    assert public_key_of(KEYS[2][0]) == KEYS[2][1]


def test_random_keys_differ() -> None:
    a, b = generate_keypair(), generate_keypair()
    assert a[0] != b[0] and a[1] != b[1]
    assert len(a[0]) == 32 and len(a[1]) == 32


@pytest.mark.parametrize("seed", [b"short", bytes(33), "x" * 32])
def test_bad_seed_is_refused(seed: object) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        generate_keypair(seed)  # type: ignore[arg-type]


def test_sign_verify_round_trip() -> None:
    secret, public = KEYS[0]
    sig = sign(secret, b"hello")
    assert len(sig) == 64
    assert sig == Signer(secret).sign(b"hello")  # Ed25519 is deterministic
    assert verify(public, b"hello", sig)
    assert not verify(public, b"hellO", sig)
    assert not verify(PUBLICS[1], b"hello", sig)
    tampered = bytes([sig[0] ^ 1]) + sig[1:]
    assert not verify(public, b"hello", tampered)


@pytest.mark.parametrize(
    ("public", "data", "sig"),
    [
        (PUBLICS[0], b"x", b""),
        (PUBLICS[0], b"x", bytes(63)),
        (PUBLICS[0], b"x", bytes(65)),
        (PUBLICS[0], b"x", "a" * 64),
        (PUBLICS[0], "x", bytes(64)),
        (PUBLICS[0], None, bytes(64)),
        (b"short", b"x", bytes(64)),
        (bytes(32), b"x", bytes(64)),  # small-order public key
        ("ab" * 16, b"x", bytes(64)),
        (None, None, None),
        (bytearray(PUBLICS[0]), b"x", bytes(64)),
    ],
)
def test_verify_never_raises_on_garbage(public: object, data: object, sig: object) -> None:
    assert verify(public, data, sig) is False  # type: ignore[arg-type]


def test_node_crypto_signs_and_verifies_by_replica_id() -> None:
    crypto = [NodeCrypto(secret, PUBLICS) for secret, _ in KEYS]
    sig = crypto[2].sign(b"msg")
    assert crypto[0].verify(2, b"msg", sig)
    assert not crypto[0].verify(1, b"msg", sig)
    assert not crypto[0].verify(2, b"msg!", sig)
    assert crypto[2].public == PUBLICS[2]
    assert crypto[2].replica_publics == tuple(PUBLICS)


@pytest.mark.parametrize("replica", [-1, 4, 10**9, True, "2", None, 2.0])
def test_node_crypto_unknown_replica_is_false(replica: object) -> None:
    c = NodeCrypto(KEYS[0][0], PUBLICS)
    sig = NodeCrypto(KEYS[2][0], PUBLICS).sign(b"m")
    assert c.verify(replica, b"m", sig) is False  # type: ignore[arg-type]


def test_node_crypto_rejects_malformed_publics() -> None:
    with pytest.raises(ValueError, match="replica 1"):
        NodeCrypto(KEYS[0][0], [PUBLICS[0], b"short"])


def test_repr_never_shows_the_secret() -> None:
    secret, public = KEYS[3]
    for obj in (Signer(secret), NodeCrypto(secret, PUBLICS)):
        assert secret.hex() not in repr(obj)
        assert public.hex() in repr(obj)


def test_public_key_hex_helpers() -> None:
    text = public_key_hex(PUBLICS[1])
    assert public_key_from_hex(text) == PUBLICS[1]
    assert public_key_from_hex(text.upper()) == PUBLICS[1]
    with pytest.raises(ValueError, match="32 bytes"):
        public_key_from_hex("ab" * 31)
    with pytest.raises(ValueError, match="not valid hex"):
        public_key_from_hex("zz" * 32)
    with pytest.raises(ValueError, match="hex string"):
        public_key_from_hex(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        public_key_hex(b"short")


# -- key files --------------------------------------------------------------------------------


def test_save_and_load_key(tmp_path: Path) -> None:
    secret, public = KEYS[1]
    path = tmp_path / "node1.key"
    save_key(path, secret, public)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert doc == {"kind": "ed25519", "public": public.hex(), "secret": secret.hex()}
    assert load_key(path) == (secret, public)
    assert [p.name for p in tmp_path.iterdir()] == ["node1.key"]  # no temp file left behind


def test_save_key_is_private_even_with_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        save_key(tmp_path / "k", *KEYS[0])
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600


def test_save_key_refuses_to_clobber(tmp_path: Path) -> None:
    path = tmp_path / "k"
    save_key(path, *KEYS[0])
    with pytest.raises(FileExistsError):
        save_key(path, *KEYS[1])
    assert load_key(path) == KEYS[0]
    save_key(path, *KEYS[1], overwrite=True)
    assert load_key(path) == KEYS[1]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_save_key_refuses_mismatched_pair(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not match"):
        save_key(tmp_path / "k", KEYS[0][0], KEYS[1][1])
    assert not (tmp_path / "k").exists()


def _write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        (json.dumps({"kind": "rsa", "public": "", "secret": ""}), "kind"),
        (
            json.dumps({"kind": "ed25519", "public": PUBLICS[0].hex(), "secret": "zz"}),
            "secret is not valid hex",
        ),
        (
            json.dumps({"kind": "ed25519", "public": PUBLICS[0].hex(), "secret": "00" * 31}),
            "secret must be 32 bytes",
        ),
        (json.dumps({"kind": "ed25519", "secret": KEYS[0][0].hex()}), "public must be a hex"),
        (
            json.dumps({"kind": "ed25519", "public": PUBLICS[1].hex(), "secret": KEYS[0][0].hex()}),
            "does not match",
        ),
        ("x" * 5000, "larger than"),
    ],
)
def test_load_key_rejects_bad_files(tmp_path: Path, body: str, match: str) -> None:
    path = _write(tmp_path / "k", body)
    with pytest.raises(KeyFileError, match=match):
        load_key(path)


def test_load_key_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot open"):
        load_key(tmp_path / "missing.key")


def test_load_key_refuses_a_directory(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_key(tmp_path)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_load_key_refuses_readable_by_others(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "k"
    save_key(path, *KEYS[2])
    path.chmod(mode)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_key(path)
    assert load_key(path, strict_permissions=False) == KEYS[2]
