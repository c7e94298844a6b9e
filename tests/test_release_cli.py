"""``edgeship keys`` / ``release`` / ``verify`` as a user runs them: real subprocesses, real
files; every failure is one line on stderr and exit 2."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest


def _run(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeship", *map(str, args)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def _one_line_error(out: subprocess.CompletedProcess[str], *words: str) -> None:
    assert out.returncode == 2, out
    assert out.stderr.startswith("error: "), out.stderr
    assert out.stderr.strip().count("\n") == 0, out.stderr
    assert "Traceback" not in out.stderr
    for word in words:
        assert word in out.stderr, (word, out.stderr)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """keys + release 1.0.0 + release 1.1.0 with a delta from 1.0.0 (built by the CLI);
    their payloads are random bytes, signed deliberately with --any-file."""
    tmp = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    v1 = rng.integers(-128, 128, 50_000, dtype=np.int8).tobytes()
    v2 = bytearray(v1)
    v2[1000:1100] = bytes(100)
    for name, data in (("v1", v1), ("v2", bytes(v2))):
        (tmp / name).mkdir()
        (tmp / name / "model.int8.tflite").write_bytes(data)
    np.savez(tmp / "golden.npz", input=np.ones((1, 8), np.float32),
             output=np.linspace(0, 1, 10, dtype=np.float32))
    assert _run("keys", "init", tmp / "keys").returncode == 0
    out = _run("release", tmp / "v1/model.int8.tflite", "--version", "1.0.0", "--keys",
               tmp / "keys", "-o", tmp / "r1", "--golden", tmp / "golden.npz",
               "--hardware", "cpu,edgetpu", "--any-file")
    assert out.returncode == 0, out.stderr
    out = _run("release", tmp / "v2/model.int8.tflite", "--version", "1.1.0", "--keys",
               tmp / "keys", "-o", tmp / "r2", "--base", tmp / "r1", "--any-file")
    assert out.returncode == 0, out.stderr
    assert "1.0.0->" in out.stdout
    return tmp


def test_keys_init_writes_private_keys_0600(world: Path) -> None:
    for name in ("root.key", "release.key"):
        assert stat.S_IMODE((world / "keys" / name).stat().st_mode) == 0o600
    assert (world / "keys/root.pub").read_bytes().startswith(b"-----BEGIN PUBLIC KEY")
    _one_line_error(_run("keys", "init", world / "keys"), "already")


def test_release_dir_has_the_contract_layout(world: Path) -> None:
    r2 = world / "r2"
    names = sorted(p.relative_to(r2).as_posix() for p in r2.rglob("*") if p.is_file())
    signed = json.loads((r2 / "manifest.json").read_text())["signed"]
    delta = signed["deltas"][0]
    assert names == sorted(["manifest.json", "keyset.json", "model.int8.tflite", delta["name"]])
    assert delta["base_version"] == "1.0.0" and delta["format"] in ("bsdiff4", "edgeship-tensor")
    assert signed["artifact"]["format"] == "tflite" and signed["model"] == "model"
    r1 = json.loads((world / "r1/manifest.json").read_text())["signed"]
    assert r1["hardware"] == ["cpu", "edgetpu"]
    assert r1["golden"]["atol"] > 0 and set(r1["golden"]["inputs"]) == {"input"}


def test_verify_ok_is_one_line_exit_0(world: Path) -> None:
    out = _run("verify", world / "r2", "--root", world / "keys/root.pub", "--base", world / "r1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok: model 1.1.0") and out.stdout.count("\n") == 1


def test_verify_with_the_wrong_root_key_fails(world: Path) -> None:
    _one_line_error(_run("verify", world / "r2", "--root", world / "keys/release.pub"),
                    "key set")


def test_verify_tampered_artifact_fails(world: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    subprocess.run(["cp", "-r", str(world / "r1"), str(bad)], check=True)
    art = bad / "model.int8.tflite"
    data = bytearray(art.read_bytes())
    data[7] ^= 1
    art.write_bytes(bytes(data))
    _one_line_error(_run("verify", bad, "--root", world / "keys/root.pub"), "sha256")


def test_release_errors_are_one_line(world: Path) -> None:
    keys = world / "keys"
    _one_line_error(_run("release", world / "nope.tflite", "--version", "1.0.0", "--keys", keys,
                         "-o", world / "x"), "nope.tflite")
    _one_line_error(_run("release", world / "v2/model.int8.tflite", "--version", "1.0", "--keys",
                         keys, "-o", world / "x", "--any-file"), "semver")
    _one_line_error(_run("release", world / "v2/model.int8.tflite", "--version", "0.9.0",
                         "--keys", keys, "-o", world / "x", "--base", world / "r1", "--any-file"),
                    "not older")
    _one_line_error(_run("verify", world / "missing", "--root", keys / "root.pub"), "missing")


def test_passphrase_protected_keys(tmp_path: Path, world: Path) -> None:
    secret = tmp_path / "pass.txt"
    secret.write_text("correct horse\n")
    keys = tmp_path / "keys"
    assert _run("keys", "init", keys, "--passphrase-file", secret).returncode == 0
    assert b"ENCRYPTED" in (keys / "release.key").read_bytes()
    args = ("release", world / "v1/model.int8.tflite", "--version", "1.0.0", "--keys", keys,
            "-o", tmp_path / "r", "--any-file")
    _one_line_error(_run(*args), "passphrase")
    _one_line_error(_run(*args, env={"EDGESHIP_KEY_PASSPHRASE": "wrong"}), "passphrase")
    assert _run(*args, env={"EDGESHIP_KEY_PASSPHRASE": "correct horse"}).returncode == 0


def test_rotate_and_revoke_make_old_releases_untrusted(tmp_path: Path, world: Path) -> None:
    keys = tmp_path / "keys"
    assert _run("keys", "init", keys).returncode == 0
    old_release = json.loads((keys / "keyset.json").read_text())["signed"]["keys"]
    out = _run("release", world / "v1/model.int8.tflite", "--version", "1.0.0", "--keys", keys,
               "-o", tmp_path / "r1", "--any-file")
    assert out.returncode == 0, out.stderr
    out = _run("keys", "rotate", keys)
    assert out.returncode == 0 and "key set v2" in out.stdout
    out = _run("keys", "revoke", keys, next(iter(old_release))[:12])
    assert out.returncode == 0 and "key set v3" in out.stdout, out.stderr
    # r1 still carries key set v1, which lists the old key: a fresh verify accepts it ...
    assert _run("verify", tmp_path / "r1", "--root", keys / "root.pub").returncode == 0
    # ... but with the current key set (v3) beside it the old key is revoked
    (tmp_path / "r1/keyset.json").write_bytes((keys / "keyset.json").read_bytes())
    _one_line_error(_run("verify", tmp_path / "r1", "--root", keys / "root.pub"), "revoked")


def test_verify_runs_the_golden_check_like_a_device(tmp_path: Path, world: Path) -> None:
    from edgeship.sdk import Model

    fixtures = Path(__file__).parent / "fixtures"
    x = np.load(fixtures / "mlp_calib.npz")["input"][:2]
    y = Model.load(fixtures / "mlp.onnx").predict(x)
    np.savez(tmp_path / "good.npz", input=x, output=y, atol=np.float32(1e-4))
    np.savez(tmp_path / "bad.npz", input=x, output=y + 0.5, atol=np.float32(1e-4))
    for name in ("good", "bad"):
        out = _run("release", fixtures / "mlp.onnx", "--version", "1.0.0", "--keys",
                   world / "keys", "-o", tmp_path / name, "--golden", tmp_path / f"{name}.npz")
        assert out.returncode == 0, out.stderr
    root = world / "keys/root.pub"
    assert _run("verify", tmp_path / "good", "--root", root).returncode == 0
    _one_line_error(_run("verify", tmp_path / "bad", "--root", root), "golden", "differs")
    assert _run("verify", tmp_path / "bad", "--root", root, "--no-golden").returncode == 0


def _unknown_op_onnx(path: Path) -> Path:
    """A well-formed ONNX file whose op no runtime knows: it parses, onnxruntime refuses it."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("NoSuchOp", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def test_release_refuses_an_artifact_no_runtime_loads(world: Path, tmp_path: Path) -> None:
    fixtures = Path(__file__).parent / "fixtures"
    truncated = tmp_path / "model.int8.tflite"
    converted = _run("convert", fixtures / "mlp.onnx", "--calib", fixtures / "mlp_calib.npz",
                     "-o", tmp_path / "conv", "-q")
    assert converted.returncode == 0, converted.stderr
    real = tmp_path / "conv" / "model.int8.tflite"
    truncated.write_bytes(real.read_bytes()[:3000])
    keys = world / "keys"
    cases = {"calib": (fixtures / "mlp_calib.npz", "not a model file"),
             "truncated": (truncated, "truncated or corrupt"),
             "unknown-op": (_unknown_op_onnx(tmp_path / "odd.onnx"), "does not load")}
    for name, (artifact, words) in cases.items():
        out = tmp_path / f"rel-{name}"
        _one_line_error(_run("release", artifact, "--version", "1.0.0", "--keys", keys,
                             "-o", out), str(artifact), words, "--any-file")
        assert not out.exists(), name  # refused before anything was written
    ok = _run("release", fixtures / "mlp_calib.npz", "--version", "1.0.0", "--keys", keys,
              "-o", tmp_path / "rel-any", "--any-file")
    assert ok.returncode == 0 and ok.stderr == "", ok.stderr
    assert (tmp_path / "rel-any" / "mlp_calib.npz").exists()
    for artifact in (real, fixtures / "mlp.onnx"):
        out = _run("release", artifact, "--version", "1.0.0", "--keys", keys,
                   "-o", tmp_path / f"rel-{artifact.suffix[1:]}")
        assert out.returncode == 0 and out.stderr == "", out.stderr  # no warning, no INFO line


def test_golden_from_an_eval_set_signs_a_working_health_check(world: Path, tmp_path: Path
                                                                ) -> None:
    fixtures = Path(__file__).parent / "fixtures"
    keys = world / "keys"
    out = _run("release", fixtures / "mlp.onnx", "--version", "1.0.0", "--keys", keys,
               "-o", tmp_path / "rel", "--golden-from", fixtures / "mlp_eval.npz")
    assert out.returncode == 0, out.stderr
    assert "golden check (atol" in out.stdout
    golden = json.loads((tmp_path / "rel" / "manifest.json").read_text())["signed"]["golden"]
    assert set(golden["inputs"]) == {"input"} and golden["atol"] > 0
    assert _run("verify", tmp_path / "rel", "--root", keys / "root.pub").returncode == 0
    np.savez(tmp_path / "other.npz", features=np.ones((3, 30), np.float32))
    _one_line_error(_run("release", fixtures / "mlp.onnx", "--version", "1.0.0", "--keys", keys,
                         "-o", tmp_path / "r2", "--golden-from", tmp_path / "other.npz"),
                    "other.npz", "no array for input(s) ['input']")
    _one_line_error(_run("release", fixtures / "mlp.onnx", "--version", "1.0.0", "--keys", keys,
                         "-o", tmp_path / "r3", "--golden-from", fixtures / "mlp_eval.npz",
                         "--golden", tmp_path / "other.npz"), "not both")
    assert not (tmp_path / "r2").exists() and not (tmp_path / "r3").exists()


def _custom_op_tflite(path: Path, custom_code: str) -> Path:
    """A well-formed TFLite file of one CUSTOM op, as the Edge TPU compiler writes them
    (its whole graph becomes one ``edgetpu-custom-op``): LiteRT on the host has no kernel."""
    import flatbuffers
    import tflite

    b = flatbuffers.Builder(1024)
    tflite.BufferStart(b)
    buffer = tflite.BufferEnd(b)
    tensors = []
    for name in ("x", "y"):
        label = b.CreateString(name)
        tflite.TensorStartShapeVector(b, 2)
        for dim in (4, 1):  # prepended: reads [1, 4]
            b.PrependInt32(dim)
        shape = b.EndVector()
        tflite.TensorStart(b)
        tflite.TensorAddShape(b, shape)
        tflite.TensorAddType(b, tflite.TensorType.INT8)
        tflite.TensorAddBuffer(b, 0)
        tflite.TensorAddName(b, label)
        tensors.append(tflite.TensorEnd(b))

    def ints(start: Any, values: list[int]) -> int:
        start(b, len(values))
        for v in reversed(values):
            b.PrependInt32(v)
        return b.EndVector()

    def offsets(start: Any, items: list[int]) -> int:
        start(b, len(items))
        for item in reversed(items):
            b.PrependUOffsetTRelative(item)
        return b.EndVector()

    op_in, op_out = ints(tflite.OperatorStartInputsVector, [0]), ints(
        tflite.OperatorStartOutputsVector, [1])
    tflite.OperatorStart(b)
    tflite.OperatorAddOpcodeIndex(b, 0)
    tflite.OperatorAddInputs(b, op_in)
    tflite.OperatorAddOutputs(b, op_out)
    operator = tflite.OperatorEnd(b)
    code_name = b.CreateString(custom_code)
    tflite.OperatorCodeStart(b)
    tflite.OperatorCodeAddDeprecatedBuiltinCode(b, tflite.BuiltinOperator.CUSTOM)
    tflite.OperatorCodeAddBuiltinCode(b, tflite.BuiltinOperator.CUSTOM)
    tflite.OperatorCodeAddCustomCode(b, code_name)
    tflite.OperatorCodeAddVersion(b, 1)
    opcode = tflite.OperatorCodeEnd(b)
    sg_tensors = offsets(tflite.SubGraphStartTensorsVector, tensors)
    sg_in, sg_out = ints(tflite.SubGraphStartInputsVector, [0]), ints(
        tflite.SubGraphStartOutputsVector, [1])
    sg_ops = offsets(tflite.SubGraphStartOperatorsVector, [operator])
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, sg_tensors)
    tflite.SubGraphAddInputs(b, sg_in)
    tflite.SubGraphAddOutputs(b, sg_out)
    tflite.SubGraphAddOperators(b, sg_ops)
    subgraph = tflite.SubGraphEnd(b)
    codes = offsets(tflite.ModelStartOperatorCodesVector, [opcode])
    subgraphs = offsets(tflite.ModelStartSubgraphsVector, [subgraph])
    buffers = offsets(tflite.ModelStartBuffersVector, [buffer])
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, 3)
    tflite.ModelAddOperatorCodes(b, codes)
    tflite.ModelAddSubgraphs(b, subgraphs)
    tflite.ModelAddBuffers(b, buffers)
    b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
    path.write_bytes(bytes(b.Output()))
    return path


def test_release_takes_an_edge_tpu_model_the_host_cannot_run(world: Path, tmp_path: Path
                                                              ) -> None:
    from edgeship.sdk import Model

    from edgeship._errors import ModelLoadError

    tpu = _custom_op_tflite(tmp_path / "model_edgetpu.tflite", "edgetpu-custom-op")
    other = _custom_op_tflite(tmp_path / "other.tflite", "MyVendorOp")
    for model in (tpu, other):  # neither runs here: no kernel for the custom op
        with pytest.raises(ModelLoadError):
            Model.load(model)
    keys = world / "keys"
    ok = _run("release", tpu, "--version", "1.0.0", "--keys", keys, "-o", tmp_path / "r-tpu",
              "--hardware", "edgetpu")
    assert ok.returncode == 0 and ok.stderr == "", ok.stderr
    _one_line_error(_run("release", other, "--version", "1.0.0", "--keys", keys,
                         "-o", tmp_path / "r-other"), "other.tflite", "does not load")
