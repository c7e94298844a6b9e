"""``edgeship keys fleet-key`` / ``release --encrypt-for --profile`` / ``verify --key`` as a
user runs them: real subprocesses, real keys and models; every failure is one line on
stderr and exit 2."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures"


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeship", *map(str, args)],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ))


def _ok(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 0, out.stderr
    return out.stdout


def _one_line_error(out: subprocess.CompletedProcess[str], *words: str) -> None:
    assert out.returncode == 2, out
    assert out.stderr.startswith("error: "), out.stderr
    assert out.stderr.strip().count("\n") == 0, out.stderr
    for word in words:
        assert word in out.stderr, (word, out.stderr)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """keys, a fleet key and a stranger's key; release 1.0.0 of mlp.onnx encrypted with a
    golden check and a drift profile; 1.1.0 (one weight changed) with a delta from it."""
    import onnx
    from edgeship.sdk import Model
    from onnx import numpy_helper

    tmp = tmp_path_factory.mktemp("enc")
    _ok(_run("keys", "init", tmp / "keys"))
    out = _ok(_run("keys", "fleet-key", tmp / "fleet"))
    assert "fleet.key" in out and "fleet.pub" in out
    _ok(_run("keys", "fleet-key", tmp / "fleet", "--name", "stranger"))
    x = np.load(FIXTURES / "mlp_calib.npz")["input"][:1]
    np.savez(tmp / "golden.npz", input=x, output=Model.load(FIXTURES / "mlp.onnx").predict(x))
    model = onnx.load(FIXTURES / "mlp.onnx")
    init = model.graph.initializer[0]
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.01, init.name))
    (tmp / "v2").mkdir()
    onnx.save(model, tmp / "v2/mlp.onnx")
    out = _ok(_run("release", FIXTURES / "mlp.onnx", "--version", "1.0.0", "--keys",
                   tmp / "keys", "-o", tmp / "r1", "--golden", tmp / "golden.npz",
                   "--encrypt-for", tmp / "fleet/fleet.pub",
                   "--profile", FIXTURES / "mlp_eval.npz"))
    assert "encrypted for 1 key(s) + archive" in out and "drift profile" in out
    out = _ok(_run("release", tmp / "v2/mlp.onnx", "--version", "1.1.0", "--keys", tmp / "keys",
                   "-o", tmp / "r2", "--base", tmp / "r1",
                   "--encrypt-for", tmp / "fleet/fleet.pub"))
    assert "1.0.0->" in out
    return tmp


def test_fleet_key_files_and_refusals(world: Path) -> None:
    assert stat.S_IMODE((world / "fleet/fleet.key").stat().st_mode) == 0o600
    assert (world / "fleet/fleet.pub").read_bytes().startswith(b"-----BEGIN PUBLIC KEY")
    before = (world / "fleet/fleet.key").read_bytes()
    _one_line_error(_run("keys", "fleet-key", world / "fleet"), "already exists", "--force")
    assert (world / "fleet/fleet.key").read_bytes() == before
    _one_line_error(_run("keys", "fleet-key", world / "fleet", "--name", "../x"), "--name")


def test_release_dir_holds_ciphertext_and_signs_profile(world: Path) -> None:
    signed = json.loads((world / "r1/manifest.json").read_text())["signed"]
    assert signed["encryption"]["scheme"] == "x25519-hkdf-sha256-aes-256-gcm"
    assert len(signed["encryption"]["recipients"]) == 2
    assert signed["profile"]["tensors"][0]["role"] == "input"
    plain = (FIXTURES / "mlp.onnx").read_bytes()
    stored = (world / "r1/mlp.onnx").read_bytes()
    assert len(stored) == len(plain) + 28
    assert not any(plain[i:i + 32] in stored for i in range(0, len(plain) - 32, 32))


def test_verify_with_and_without_key(world: Path) -> None:
    out = _ok(_run("verify", world / "r2", "--root", world / "keys/root.pub", "--base",
                   world / "r1", "--key", world / "fleet/fleet.key"))
    assert out.startswith("ok: mlp 1.1.0") and "decrypted with --key" in out
    out = _ok(_run("verify", world / "r1", "--root", world / "keys/root.pub"))
    assert "not decrypted (no --key)" in out
    _one_line_error(_run("verify", world / "r2", "--root", world / "keys/root.pub", "--base",
                         world / "r1"), "--key")
    stranger = _run("verify", world / "r1", "--root", world / "keys/root.pub", "--key",
                    world / "fleet/stranger.key")
    from edgeship.sdk.release._crypt import keyid_of_public

    fleet_id = keyid_of_public((world / "fleet/fleet.pub").read_bytes())[:16]
    stranger_id = keyid_of_public((world / "fleet/stranger.pub").read_bytes())[:16]
    _one_line_error(stranger, "encrypted for keys", fleet_id,
                    f"this device's key is {stranger_id}")
    _one_line_error(_run("verify", world / "r1", "--root", world / "keys/root.pub", "--key",
                         world / "keys/release.key"), "--key", "X25519")
    _one_line_error(_run("verify", world / "r1", "--root", world / "keys/root.pub", "--key",
                         world / "nope.key"), "--key")


def test_flipped_ciphertext_byte_fails_verify(world: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(world / "r1", bad)
    blob = bytearray((bad / "mlp.onnx").read_bytes())
    blob[500] ^= 0x40
    (bad / "mlp.onnx").write_bytes(bytes(blob))
    _one_line_error(_run("verify", bad, "--root", world / "keys/root.pub", "--key",
                         world / "fleet/fleet.key"), "mlp.onnx", "sha256")


def test_release_refuses_bad_keys_and_profiles(world: Path, tmp_path: Path) -> None:
    base = ("release", FIXTURES / "mlp.onnx", "--version", "2.0.0", "--keys", world / "keys")
    _one_line_error(_run(*base, "-o", tmp_path / "a", "--encrypt-for", world / "keys/root.pub"),
                    "--encrypt-for", "X25519")
    _one_line_error(_run(*base, "-o", tmp_path / "b", "--encrypt-for", tmp_path / "missing.pub"),
                    "--encrypt-for", "missing.pub")
    (tmp_path / "p.json").write_text('{"version": 1, "samples": "many"}')
    _one_line_error(_run(*base, "-o", tmp_path / "c", "--profile", tmp_path / "p.json"),
                    "--profile")
    _one_line_error(_run(*base, "-o", tmp_path / "d", "--profile", FIXTURES / "cnn_eval.npz"),
                    "cnn_eval.npz")
    # a plaintext release from an encrypted base would reveal the base in its delta
    _one_line_error(_run(*base, "-o", tmp_path / "e", "--base", world / "r1"), "reveal")
    for name in "abcde":
        assert not (tmp_path / name / "manifest.json").exists()
