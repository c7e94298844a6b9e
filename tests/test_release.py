"""The Release / verify_release / KeyDir library API on real files and a real model."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from edgeship.sdk import (
    KeyDir,
    Model,
    Offer,
    Release,
    TrustedState,
    check_offer,
    check_payload,
    verify_release,
)

from edgeship import DigestMismatchError, InputError, LengthMismatchError, MismatchError

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture()
def keys(tmp_path: Path) -> KeyDir:
    kd = KeyDir(tmp_path / "keys")
    kd.init()
    return kd


def _mlp_golden(tmp_path: Path, *, noise: float = 0.0) -> Path:
    x = np.load(FIXTURES / "mlp_calib.npz")["input"][:1]
    y = Model.load(FIXTURES / "mlp.onnx").predict(x)
    path = tmp_path / "golden.npz"
    np.savez(path, input=x, output=y + noise)
    return path


def test_default_golden_tolerance_comes_from_the_artifact(tmp_path: Path, keys: KeyDir) -> None:
    exact = Release.build(FIXTURES / "mlp.onnx", version="1.0.0", keydir=keys.path,
                          out=tmp_path / "r1", golden=_mlp_golden(tmp_path))
    golden = exact.manifest.golden
    assert golden is not None
    inputs, expected = golden.arrays()
    assert set(inputs) == {"input"} and expected.shape == (1, 1)
    step = max(float(np.abs(expected).max()), 1e-3) / 127
    assert golden.atol == pytest.approx(2 * step)  # the artifact reproduces it exactly
    noisy = Release.build(FIXTURES / "mlp.onnx", version="1.0.1", keydir=keys.path,
                          out=tmp_path / "r2", golden=_mlp_golden(tmp_path, noise=0.01))
    assert noisy.manifest.golden is not None
    assert noisy.manifest.golden.atol == pytest.approx(0.015, rel=1e-3)


def test_golden_of_another_model_is_refused_not_turned_into_a_tolerance(
    tmp_path: Path, keys: KeyDir
) -> None:
    # 0.5 off on a sigmoid output is ~64 INT8 steps: not quantization noise
    with pytest.raises(InputError, match="another model"):
        Release.build(FIXTURES / "mlp.onnx", version="1.0.0", keydir=keys.path,
                      out=tmp_path / "r1", golden=_mlp_golden(tmp_path, noise=0.5))
    assert not (tmp_path / "r1" / "manifest.json").exists()


def test_release_round_trip_through_offer_and_delta(tmp_path: Path, keys: KeyDir) -> None:
    v1 = (FIXTURES / "mobilenet.onnx").read_bytes()
    v2 = bytearray(v1)
    v2[-5000:-4000] = bytes(1000)
    (tmp_path / "a").mkdir()
    (tmp_path / "a/model.onnx").write_bytes(bytes(v2))
    r1 = Release.build(FIXTURES / "mobilenet.onnx", version="1.0.0", keydir=keys.path,
                       out=tmp_path / "r1", model_name="model")
    r2 = Release.build(tmp_path / "a/model.onnx", version="1.1.0", keydir=keys.path,
                       out=tmp_path / "r2", bases=[r1.path])
    (delta,) = r2.manifest.deltas
    assert delta.size < 10_000 and delta.base_sha256 == r1.manifest.artifact.sha256
    offer = Offer.from_bytes(r2.offer().to_bytes())
    state = TrustedState().installed(r1.manifest)
    manifest = check_offer(offer, keys.root_pub.read_bytes(), state, model_name="model",
                           hardware="cpu")
    assert check_payload(manifest, r2.read_delta(delta), base=v1) == bytes(v2)
    assert verify_release(r2.path, keys.root_pub, bases=[r1.path]).version == "1.1.0"
    v3 = bytes(v2[:-100]) + bytes(100)
    (tmp_path / "a/model.onnx").write_bytes(v3)
    r3 = Release.build(tmp_path / "a/model.onnx", version="1.2.0", keydir=keys.path,
                       out=tmp_path / "r3", bases=[r1.path, r2.path])
    assert [d.base_version for d in r3.manifest.deltas] == ["1.0.0", "1.1.0"]
    for base, info in zip((v1, bytes(v2)), r3.manifest.deltas, strict=True):
        assert check_payload(r3.manifest, r3.read_delta(info), base=base) == v3


def test_verify_release_names_the_broken_file(tmp_path: Path, keys: KeyDir) -> None:
    rel = Release.build(FIXTURES / "cnn.onnx", version="2.0.0", keydir=keys.path,
                        out=tmp_path / "r")
    art = rel.path / "cnn.onnx"
    art.write_bytes(art.read_bytes() + b"\0")
    with pytest.raises(LengthMismatchError, match=r"cnn\.onnx"):
        verify_release(rel.path, keys.root_pub)
    shutil.copy(FIXTURES / "mlp.onnx", art)
    with pytest.raises((DigestMismatchError, LengthMismatchError), match=r"cnn\.onnx"):
        verify_release(rel.path, keys.root_pub)


def test_verify_release_checks_model_and_hardware(tmp_path: Path, keys: KeyDir) -> None:
    rel = Release.build(FIXTURES / "cnn.onnx", version="2.0.0", keydir=keys.path,
                        out=tmp_path / "r", hardware=["edgetpu"])
    assert verify_release(rel.path, keys.root_pub, model_name="cnn", hardware="edgetpu")
    with pytest.raises(MismatchError):
        verify_release(rel.path, keys.root_pub, hardware="cpu")
    with pytest.raises(MismatchError):
        verify_release(rel.path, keys.root_pub, model_name="mlp")


def test_build_refuses_bad_bases_and_overwrites(tmp_path: Path, keys: KeyDir) -> None:
    r1 = Release.build(FIXTURES / "cnn.onnx", version="1.0.0", keydir=keys.path,
                       out=tmp_path / "r1")
    with pytest.raises(InputError, match="already holds"):
        Release.build(FIXTURES / "cnn.onnx", version="1.0.1", keydir=keys.path, out=r1.path)
    with pytest.raises(InputError, match="not 'mlp'"):
        Release.build(FIXTURES / "mlp.onnx", version="1.1.0", keydir=keys.path,
                      out=tmp_path / "r2", bases=[r1.path])
    (r1.path / "cnn.onnx").write_bytes(b"corrupt")
    with pytest.raises(InputError):
        Release.build(FIXTURES / "cnn.onnx", version="1.1.0", keydir=keys.path,
                      out=tmp_path / "r3", bases=[r1.path])


def test_trusted_state_survives_json_and_rejects_garbage() -> None:
    state = TrustedState(keyset_version=3, keyset_sha256="ab" * 32, model="m", version="1.2.3",
                         sha256="cd" * 32, keyid="ef" * 32, seen={"ef" * 32: "1.2.3"})
    assert TrustedState.from_json(state.to_json()) == state
    from edgeship import MalformedError

    for bad in ("[]", '{"seen": {"k": "1.2"}}', '{"keyset_version": "3"}', "\xff"):
        with pytest.raises(MalformedError):
            TrustedState.from_json(bad)


def test_offer_wire_form_is_canonical_and_round_trips(tmp_path: Path, keys: KeyDir) -> None:
    rel = Release.build(FIXTURES / "mlp.onnx", version="1.0.0", keydir=keys.path,
                        out=tmp_path / "r")
    wire = rel.offer().to_bytes()
    again = Offer.from_bytes(wire)
    assert again == rel.offer() and again.to_bytes() == wire
    assert Release.load(tmp_path / "r").offer().to_bytes() == wire
    assert b"\n" not in wire and wire.startswith(b'{"keyset":')


def test_release_of_converted_models_ships_the_tensor_delta(tmp_path: Path, keys: KeyDir) -> None:
    """Two real ``edgeship convert`` outputs: the release keeps the smaller delta per base,
    here the tensor-aware one, and it rebuilds the TFLite artifact exactly."""
    import subprocess
    import sys

    import onnx
    from onnx import numpy_helper

    model = onnx.load(FIXTURES / "cnn.onnx")
    rng = np.random.default_rng(0)
    for t in model.graph.initializer:
        a = numpy_helper.to_array(t)
        if a.ndim == 4:  # every conv weight moves by ~1%
            t.CopyFrom(numpy_helper.from_array(
                (a * (1 + 0.01 * rng.standard_normal(a.shape))).astype(np.float32), t.name))
    onnx.save(model, tmp_path / "cnn2.onnx")
    outs = []
    for i, src in enumerate((FIXTURES / "cnn.onnx", tmp_path / "cnn2.onnx")):
        out = tmp_path / f"c{i}"
        done = subprocess.run([sys.executable, "-m", "edgeship", "convert", str(src), "--calib",
                               str(FIXTURES / "cnn_calib.npz"), "-o", str(out), "-q"],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        outs.append(out / "model.int8.tflite")
    r1 = Release.build(outs[0], version="1.0.0", keydir=keys.path, out=tmp_path / "r1")
    r2 = Release.build(outs[1], version="1.0.1", keydir=keys.path, out=tmp_path / "r2",
                       bases=[r1.path])
    (delta,) = r2.manifest.deltas
    import bsdiff4

    bsdiff = len(bsdiff4.diff(outs[0].read_bytes(), outs[1].read_bytes()))
    assert delta.format == "edgeship-tensor" and delta.size < bsdiff
    assert delta.size < 0.5 * r2.manifest.artifact.size
    rebuilt = check_payload(r2.manifest, r2.read_delta(delta), base=outs[0].read_bytes())
    assert rebuilt == outs[1].read_bytes()
