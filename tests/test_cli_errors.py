"""Bad input gets one clear error and loses nothing: every ``edgeship`` command, run as a
real subprocess on real (broken) files, exits non-zero with exactly one ``error: ...`` line
on stderr that names the problem, never a traceback or an "internal error", never a hang;
and what was there before (an earlier output, a release, a key dir) is left as it was.

All cases run at once in one thread pool (each is its own process), then each row of the
table is checked on its own.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import free_port

FIXTURES = Path(__file__).parent / "fixtures"
# the module's fixture runs ~90 CLI processes (six at a time) before its first test: about
# a minute on an idle machine, more than the suite's 300 s per test on a loaded one
pytestmark = pytest.mark.timeout(1200)


@dataclass(frozen=True, kw_only=True)
class Case:
    id: str
    argv: tuple[str, ...]  # "{w}" is the work dir, "{fx}" the fixtures, "{closed}"/"{busy}" ports
    words: tuple[str, ...]  # each must appear in the error line
    absent: str = ""  # a path (under {w}) that must not exist afterwards
    max_s: float = 60.0  # generous bound for "fails, does not hang"


def _c(id: str, *argv: str, words: tuple[str, ...], absent: str = "", max_s: float = 60.0) -> Case:
    return Case(id=id, argv=argv, words=words, absent=absent, max_s=max_s)


_CALIB = "{fx}/mlp_calib.npz"
_MODEL = "{fx}/mlp.onnx"
_ART = "{w}/art/model.int8.onnx"
_CLOSED = "mqtt://127.0.0.1:{closed}"

CASES: list[Case] = [
    # convert: model, calibration/eval data, output
    _c("convert-missing-model", "convert", "{w}/missing.onnx", "--calib", _CALIB, "-o", "{w}/o1",
       words=("missing.onnx", "not found"), absent="o1"),
    _c("convert-dir-model", "convert", "{w}/adir", "--calib", _CALIB, "-o", "{w}/o2",
       words=("adir", "directory"), absent="o2"),
    _c("convert-empty-onnx", "convert", "{w}/empty.onnx", "--calib", _CALIB, "-o", "{w}/o3",
       words=("empty.onnx", "not an ONNX model"), absent="o3"),
    _c("convert-truncated-onnx", "convert", "{w}/trunc.onnx", "--calib", _CALIB, "-o", "{w}/o4",
       words=("trunc.onnx", "not an ONNX model"), absent="o4"),
    _c("convert-text-renamed-onnx", "convert", "{w}/text.onnx", "--calib", _CALIB, "-o", "{w}/o5",
       words=("text.onnx", "not an ONNX model"), absent="o5"),
    _c("convert-missing-calib", "convert", _MODEL, "--calib", "{w}/missing.npz", "-o", "{w}/o6",
       words=("missing.npz", "not found"), absent="o6"),
    _c("convert-empty-calib", "convert", _MODEL, "--calib", "{w}/empty.npz", "-o", "{w}/o7",
       words=("empty.npz", ".npz"), absent="o7"),
    _c("convert-truncated-calib", "convert", _MODEL, "--calib", "{w}/trunc.npz", "-o", "{w}/o8",
       words=("trunc.npz", ".npz"), absent="o8"),
    _c("convert-calib-wrong-keys", "convert", _MODEL, "--calib", "{w}/twokeys.npz", "-o",
       "{w}/o9", words=("twokeys.npz", "keys", "input"), absent="o9"),
    _c("convert-calib-wrong-shape", "convert", _MODEL, "--calib", "{w}/wrongshape.npz", "-o",
       "{w}/o10", words=("wrongshape.npz", "shape"), absent="o10"),
    _c("convert-calib-wrong-dtype", "convert", _MODEL, "--calib", "{w}/strings.npz", "-o",
       "{w}/o11", words=("strings.npz", "dtype"), absent="o11"),
    _c("convert-calib-nan", "convert", _MODEL, "--calib", "{w}/nan.npz", "-o", "{w}/o12",
       words=("nan.npz", "NaN"), absent="o12"),
    _c("convert-eval-nan", "convert", _MODEL, "--calib", _CALIB, "--eval", "{w}/nan.npz", "-o",
       "{w}/o13", words=("nan.npz", "eval"), absent="o13"),
    _c("convert-eval-string-labels", "convert", _MODEL, "--calib", _CALIB, "--eval",
       "{w}/strlabel.npz", "-o", "{w}/o15", words=("label", "dtype"), absent="o15"),
    _c("convert-out-under-a-file", "convert", _MODEL, "--calib", _CALIB, "-o", "{w}/afile/out",
       words=("afile",)),
    _c("convert-bad-format", "convert", _MODEL, "--calib", _CALIB, "-o", "{w}/o14", "--format",
       "pb", words=("format", "pb"), absent="o14"),
    _c("convert-bad-input-keeps-old-output", "convert", _MODEL, "--calib", "{w}/nan.npz", "-o",
       "{w}/keep_out", words=("NaN",)),
    _c("convert-out-is-a-foreign-dir", "convert", _MODEL, "--calib", _CALIB, "-o",
       "{w}/foreign", words=("foreign", "not empty", "precious.txt")),
    # keys
    _c("keys-init-over-a-file", "keys", "init", "{w}/afile", words=("afile", "not a directory")),
    _c("keys-init-under-a-file", "keys", "init", "{w}/afile/k", words=("afile/k", "cannot write")),
    _c("keys-init-existing", "keys", "init", "{w}/keys", words=("already holds keys",)),
    _c("keys-rotate-wrong-passphrase", "keys", "rotate", "{w}/pkeys", "--passphrase-file",
       "{w}/wrongpass", words=("root.key", "passphrase")),
    _c("keys-rotate-no-passphrase", "keys", "rotate", "{w}/pkeys", words=("passphrase",)),
    _c("keys-revoke-unknown-id", "keys", "revoke", "{w}/keys", "deadbeef",
       words=("deadbeef",)),
    _c("keys-rotate-corrupt-keyset", "keys", "rotate", "{w}/ckeys",
       words=("keyset.json", "JSON")),
    # release
    _c("release-missing-artifact", "release", "{w}/missing.onnx", "--version", "1.0.0", "--keys",
       "{w}/keys", "-o", "{w}/r1", words=("missing.onnx",), absent="r1"),
    _c("release-dir-artifact", "release", "{w}/adir", "--version", "1.0.0", "--keys", "{w}/keys",
       "-o", "{w}/r2", words=("adir", "directory"), absent="r2"),
    _c("release-empty-artifact", "release", "{w}/empty.onnx", "--version", "1.0.0", "--keys",
       "{w}/keys", "-o", "{w}/r3", words=("empty.onnx", "empty"), absent="r3"),
    _c("release-bad-version", "release", _ART, "--version", "one", "--keys", "{w}/keys", "-o",
       "{w}/r4", words=("semver",), absent="r4"),
    _c("release-wrong-passphrase", "release", _ART, "--version", "1.0.0", "--keys", "{w}/pkeys",
       "--passphrase-file", "{w}/wrongpass", "-o", "{w}/r5", words=("passphrase",), absent="r5"),
    _c("release-truncated-golden", "release", _ART, "--version", "1.0.0", "--keys", "{w}/keys",
       "-o", "{w}/r6", "--golden", "{w}/trunc.npz", words=("--golden", "trunc.npz"),
       absent="r6"),
    _c("release-golden-without-output", "release", _ART, "--version", "1.0.0", "--keys",
       "{w}/keys", "-o", "{w}/r7", "--golden", _CALIB, words=("--golden", "output"), absent="r7"),
    _c("release-out-under-a-file", "release", _ART, "--version", "1.0.0", "--keys", "{w}/keys",
       "-o", "{w}/afile/r", words=("--out", "afile/r")),
    _c("release-over-existing", "release", _ART, "--version", "2.0.0", "--keys", "{w}/keys",
       "-o", "{w}/rel1", words=("already holds a release",)),
    _c("release-force-with-bad-golden-keeps-old", "release", _ART, "--version", "2.0.0",
       "--keys", "{w}/keys", "-o", "{w}/rel1", "--force", "--golden", "{w}/trunc.npz",
       words=("trunc.npz",)),
    _c("release-corrupt-keyset", "release", _ART, "--version", "1.0.0", "--keys", "{w}/ckeys",
       "-o", "{w}/r8", words=("keyset.json",), absent="r8"),
    # verify
    _c("verify-missing-dir", "verify", "{w}/nothere", "--root", "{w}/keys/root.pub",
       words=("nothere", "not a release directory")),
    _c("verify-tampered-manifest", "verify", "{w}/tampered", "--root", "{w}/keys/root.pub",
       words=("manifest", "signature")),
    _c("verify-manifest-not-json", "verify", "{w}/badjson", "--root", "{w}/keys/root.pub",
       words=("manifest", "JSON")),
    _c("verify-flipped-payload", "verify", "{w}/flipped", "--root", "{w}/keys/root.pub",
       words=("sha256",)),
    _c("verify-root-missing", "verify", "{w}/rel1", "--root", "{w}/nope.pub",
       words=("root key", "nope.pub")),
    _c("verify-root-not-a-key", "verify", "{w}/rel1", "--root", "{w}/afile",
       words=("root key", "afile")),
    _c("verify-wrong-root", "verify", "{w}/rel1", "--root", "{w}/pkeys/root.pub",
       words=("unknown key",)),
    # broker
    _c("broker-port-in-use", "broker", "--port", "{busy}", words=("{busy}", "in use"), max_s=15),
    _c("broker-port-out-of-range", "broker", "--port", "99999", words=("--port",)),
    # fleet
    _c("fleet-serve-nothing-listens", "fleet", "serve", "--broker", _CLOSED, "--timeout", "2",
       "--releases", "{w}/rel1", words=("cannot reach the broker",), max_s=15),
    _c("fleet-serve-malformed-url", "fleet", "serve", "--broker", "nonsense", "--releases",
       "{w}/rel1", words=("broker url", "nonsense")),
    _c("fleet-serve-not-a-release", "fleet", "serve", "--broker", _CLOSED, "--releases",
       "{w}/adir", words=("manifest",)),
    _c("fleet-serve-tampered-release", "fleet", "serve", "--broker", _CLOSED, "--releases",
       "{w}/tampered", words=("tampered", "signature")),
    _c("fleet-serve-wildcard-fleet", "fleet", "serve", "--broker", _CLOSED, "--fleet", "a/#",
       "--releases", "{w}/rel1", words=("--fleet", "a/#")),
    _c("fleet-serve-bad-group", "fleet", "serve", "--broker", _CLOSED, "--group", "a/b",
       "--releases", "{w}/rel1", words=("--group", "a/b")),
    _c("fleet-push-tampered-release", "fleet", "push", "{w}/tampered", "--broker", _CLOSED,
       "--fleet", "f", "--devices", "d1", "--state", "{w}/st4.sqlite",
       words=("tampered", "signature")),
    _c("fleet-push-flipped-payload", "fleet", "push", "{w}/flipped", "--broker", _CLOSED,
       "--fleet", "f", "--devices", "d1", "--state", "{w}/st5.sqlite",
       words=("flipped", "sha256")),
    _c("fleet-push-wildcard-fleet", "fleet", "push", "{w}/rel1", "--broker", _CLOSED, "--fleet",
       "a/#", "--devices", "d1", "--state", "{w}/st6.sqlite", words=("--fleet", "a/#")),
    _c("fleet-push-wildcard-device", "fleet", "push", "{w}/rel1", "--broker", _CLOSED,
       "--fleet", "f", "--devices", "d1,+", "--state", "{w}/st7.sqlite",
       words=("--devices", "+")),
    _c("fleet-push-nothing-listens", "fleet", "push", "{w}/rel1", "--broker", _CLOSED, "--fleet",
       "f", "--devices", "d1", "--state", "{w}/st1.sqlite", words=("cannot reach the broker",),
       max_s=30),
    _c("fleet-push-malformed-url", "fleet", "push", "{w}/rel1", "--broker", "mqtt://", "--fleet",
       "f", "--devices", "d1", "--state", "{w}/st2.sqlite", words=("broker url",)),
    _c("fleet-push-bad-canary", "fleet", "push", "{w}/rel1", "--broker", _CLOSED, "--fleet", "f",
       "--canary", "lots", "--state", "{w}/st3.sqlite", words=("--canary", "lots")),
    _c("fleet-push-state-not-a-db", "fleet", "push", "{w}/rel1", "--broker", _CLOSED, "--fleet",
       "f", "--devices", "d1", "--state", "{w}/text.onnx", words=("--state", "text.onnx")),
    _c("fleet-status-nothing-listens", "fleet", "status", "--broker", _CLOSED, "--fleet", "f",
       "--timeout", "2", words=("cannot reach the broker",), max_s=15),
    _c("fleet-status-wildcard-fleet", "fleet", "status", "--broker", _CLOSED, "--fleet", "#",
       words=("--fleet",)),
    _c("fleet-status-zero-timeout", "fleet", "status", "--broker", _CLOSED, "--fleet", "f",
       "--timeout", "0", words=("--timeout",)),
    _c("fleet-status-endless-password-file", "fleet", "status", "--broker", _CLOSED, "--fleet",
       "f", "--password-file", "/dev/zero", words=("--password-file", "larger than")),
    _c("fleet-credentials-bad-device", "fleet", "credentials", "--fleet", "f", "--devices",
       "ok,a/b", "-o", "{w}/c1", words=("a/b",), absent="c1"),
    _c("fleet-credentials-out-under-a-file", "fleet", "credentials", "--fleet", "f",
       "--devices", "d1", "-o", "{w}/afile/c", words=("--out", "afile/c")),
    # agent
    _c("agent-missing-config", "agent", "run", "--config", "{w}/nope.toml",
       words=("nope.toml",)),
    _c("agent-config-is-dir", "agent", "run", "--config", "{w}/adir", words=("adir",)),
    _c("agent-config-endless", "agent", "run", "--config", "/dev/zero",
       words=("/dev/zero", "larger than")),
    _c("agent-config-bad-toml", "agent", "run", "--config", "{w}/syntax.toml",
       words=("syntax.toml", "TOML")),
    _c("agent-config-unknown-runtime", "agent", "run", "--config", "{w}/runtime.toml",
       words=("model.runtime", "gpu")),
    _c("agent-config-mistyped-threads", "agent", "run", "--config", "{w}/threads.toml",
       words=("model.threads",)),
    _c("agent-config-no-device-id", "agent", "run", "--config", "{w}/nodev.toml",
       words=("device_id",)),
    _c("agent-config-missing-root-key", "agent", "run", "--config", "{w}/noroot.toml",
       words=("root_key", "nope.pub")),
    _c("agent-config-bad-broker-url", "agent", "run", "--config", "{w}/badurl.toml",
       words=("broker.url",)),
    _c("agent-config-bad-listen", "agent", "run", "--config", "{w}/badlisten.toml",
       words=("api.listen",)),
    _c("agent-root-key-not-a-key", "agent", "run", "--config", "{w}/roottext.toml",
       words=("root_key", "afile")),
    _c("agent-tls-ca-missing", "agent", "run", "--config", "{w}/ca.toml",
       words=("broker TLS", "nope-ca.pem")),
    _c("agent-tls-ca-not-a-cert", "agent", "run", "--config", "{w}/cafile.toml",
       words=("broker TLS", "afile")),
    _c("agent-port-in-use", "agent", "run", "--config", "{w}/busy.toml",
       words=("{busy}", "in use"), max_s=30),
    # cloud
    _c("cloud-missing-model", "cloud", "serve", "{w}/missing.onnx", "--port", "0",
       words=("missing.onnx", "does not exist")),
    _c("cloud-dir-model", "cloud", "serve", "{w}/adir", "--port", "0",
       words=("adir", "not a file")),
    _c("cloud-empty-model", "cloud", "serve", "{w}/empty.onnx", "--port", "0",
       words=("empty.onnx",)),
    _c("cloud-truncated-model", "cloud", "serve", "{w}/trunc.onnx", "--port", "0",
       words=("trunc.onnx",)),
    _c("cloud-tflite-model", "cloud", "serve", "{w}/trunc.tflite", "--port", "0",
       words=("trunc.tflite",)),
    _c("cloud-port-in-use", "cloud", "serve", _MODEL, "--port", "{busy}",
       words=("{busy}", "in use")),
    _c("cloud-api-key-file-missing", "cloud", "serve", _MODEL, "--port", "0", "--api-key-file",
       "{w}/nofile", words=("--api-key-file", "nofile")),
    _c("cloud-tls-cert-missing", "cloud", "serve", _MODEL, "--port", "0", "--tls-cert",
       "{w}/nocert.pem", words=("--tls-cert", "nocert.pem")),
    _c("cloud-tls-cert-not-pem", "cloud", "serve", _MODEL, "--port", "0", "--tls-cert",
       "{w}/afile", words=("--tls-cert", "afile", "PEM")),
    _c("cloud-name-not-a-path-segment", "cloud", "serve", _MODEL, "--port", "0", "--name",
       "a/b", words=("a/b",)),
    # demo
    _c("demo-malformed-broker", "demo", "--workdir", "{w}/d1", "--broker", "nonsense",
       words=("--broker",), absent="d1", max_s=15),
    _c("demo-nothing-listens", "demo", "--workdir", "{w}/d2", "--broker", _CLOSED,
       words=("--broker", "{closed}"), absent="d2", max_s=15),
]

# directories a failing command must leave byte-for-byte as they were
_KEPT = ("keep_out", "foreign", "rel1", "keys", "pkeys")


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _toml(w: Path, name: str, extra: str = "", **replace: str) -> None:
    text = (f'device_id = "d1"\nfleet = "f"\ndata_dir = "{w}/data-{name}"\n'
            f'root_key = "{w}/keys/root.pub"\n[broker]\nurl = "mqtt://127.0.0.1:1"\n')
    for old, new in replace.items():
        text = text.replace(old, new)
    (w / f"{name}.toml").write_text(text + extra)


def _make_files(w: Path) -> None:
    model = (FIXTURES / "mlp.onnx").read_bytes()
    calib = (FIXTURES / "mlp_calib.npz").read_bytes()
    x = np.load(FIXTURES / "mlp_calib.npz")["input"]
    (w / "adir").mkdir()
    (w / "afile").write_text("just text\n")
    for name, data in {"empty.onnx": b"", "empty.npz": b"", "trunc.onnx": model[: len(model) // 2],
                       "text.onnx": b"hello, I am not a model\n",
                       "trunc.npz": calib[: len(calib) // 2],
                       "trunc.tflite": b"\x18\x00\x00\x00TFL3" + bytes(40)}.items():
        (w / name).write_bytes(data)
    np.savez(w / "twokeys.npz", a=x, b=x)
    np.savez(w / "wrongshape.npz", input=np.zeros((10, 7), np.float32))
    np.savez(w / "strings.npz", input=np.array([["a"] * 30] * 4))
    nan = x.copy()
    nan[0, 0] = np.nan
    np.savez(w / "nan.npz", input=nan)
    np.savez(w / "strlabel.npz", input=x, label=np.array(["cat"] * len(x)))
    (w / "keep_out").mkdir()
    (w / "keep_out" / "model.int8.onnx").write_bytes(b"an earlier conversion")
    (w / "keep_out" / "report.json").write_text("{}")
    (w / "foreign").mkdir()
    (w / "foreign" / "precious.txt").write_text("not edgeship's to delete\n")
    (w / "pass").write_text("right\n")
    (w / "wrongpass").write_text("wrong\n")


def _make_releases(w: Path) -> None:
    from edgeship.sdk.release._keydir import KeyDir
    from edgeship.sdk.release._release import Release

    KeyDir(w / "keys").init()
    KeyDir(w / "pkeys").init(passphrase=b"right")
    (w / "art").mkdir()
    shutil.copy(FIXTURES / "mlp.onnx", w / "art" / "model.int8.onnx")
    Release.build(w / "art" / "model.int8.onnx", version="1.0.0", keydir=w / "keys",
                  out=w / "rel1")
    shutil.copytree(w / "keys", w / "ckeys")
    (w / "ckeys" / "keyset.json").write_text("{not json")
    for name in ("tampered", "badjson", "flipped"):
        shutil.copytree(w / "rel1", w / name)
    manifest = json.loads((w / "tampered" / "manifest.json").read_text())
    manifest["signed"]["version"] = "9.0.0"
    (w / "tampered" / "manifest.json").write_text(json.dumps(manifest))
    (w / "badjson" / "manifest.json").write_text("{not json")
    payload = w / "flipped" / "model.int8.onnx"
    data = bytearray(payload.read_bytes())
    data[100] ^= 1
    payload.write_bytes(bytes(data))


def _make_configs(w: Path, busy: int) -> None:
    _toml(w, "syntax", "[model\nname = 1\n")
    _toml(w, "runtime", '[model]\nruntime = "gpu"\n')
    _toml(w, "threads", '[model]\nthreads = "two"\n')
    _toml(w, "nodev", **{'device_id = "d1"\n': ""})
    _toml(w, "noroot", **{"keys/root.pub": "nope.pub"})
    _toml(w, "badurl", **{"mqtt://127.0.0.1:1": "ftp://x"})
    _toml(w, "badlisten", '[api]\nlisten = "nonsense"\n')
    _toml(w, "busy", f'[api]\nlisten = "127.0.0.1:{busy}"\n')
    _toml(w, "roottext", **{"keys/root.pub": "afile"})
    plain = 'url = "mqtt://127.0.0.1:1"\n'
    _toml(w, "ca", **{plain: f'url = "mqtts://127.0.0.1:1"\nca = "{w}/nope-ca.pem"\n'})
    _toml(w, "cafile", **{plain: f'url = "mqtts://127.0.0.1:1"\nca = "{w}/afile"\n'})


def _run(case: Case, subs: dict[str, str]) -> dict[str, Any]:
    argv = [a.format(**subs) for a in case.argv]
    started = time.monotonic()
    try:
        out = subprocess.run([sys.executable, "-m", "edgeship", *argv], capture_output=True,
                             text=True, timeout=case.max_s + 30, stdin=subprocess.DEVNULL)
        code, stderr = out.returncode, out.stderr
    except subprocess.TimeoutExpired as exc:
        code, stderr = None, str(exc.stderr or "")
    return {"code": code, "stderr": stderr, "seconds": time.monotonic() - started}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    w = tmp_path_factory.mktemp("cli-errors")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    busy_port = busy.getsockname()[1]
    try:
        _make_files(w)
        _make_releases(w)
        _make_configs(w, busy_port)
        before = {d: _snapshot(w / d) for d in _KEPT}
        subs = {"w": str(w), "fx": str(FIXTURES), "closed": str(free_port()),
                "busy": str(busy_port)}
        with ThreadPoolExecutor(max_workers=6) as pool:
            runs = dict(zip([c.id for c in CASES], pool.map(lambda c: _run(c, subs), CASES),
                            strict=True))
        yield {"runs": runs, "w": w, "subs": subs, "before": before,
               "after": {d: _snapshot(w / d) for d in _KEPT}}
    finally:
        busy.close()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_line(results: dict[str, Any], case: Case) -> None:
    run = results["runs"][case.id]
    stderr: str = run["stderr"]
    assert run["code"] is not None, f"hung: {stderr!r}"
    assert run["code"] != 0, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    for word in case.words:
        assert word.format(**results["subs"]) in lines[0], (word, lines[0])
    assert run["seconds"] < case.max_s, run
    if case.absent:
        assert not (results["w"] / case.absent).exists(), f"{case.absent} was created"


def test_failed_commands_lose_nothing(results: dict[str, Any]) -> None:
    for name in _KEPT:
        assert results["after"][name] == results["before"][name], f"{name} changed"
    assert results["before"]["keep_out"]["model.int8.onnx"] == hashlib.sha256(
        b"an earlier conversion").hexdigest()
    assert list(results["after"]["foreign"]) == ["precious.txt"]


def test_convert_of_a_model_with_nothing_to_quantize_is_no_internal_error(tmp_path: Path) -> None:
    """Erf has no INT8 rule: the model stays float, which the report says; it used to end in
    'internal error: ValueError: zip()' from the per-layer SQNR."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Erf", ["input"], ["y"])], "erf", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "erf.onnx")
    np.savez(tmp_path / "calib.npz", input=np.random.default_rng(0).random((8, 4), np.float32))
    out = subprocess.run([sys.executable, "-m", "edgeship", "convert", str(tmp_path / "erf.onnx"),
                          "--calib", str(tmp_path / "calib.npz"), "-o", str(tmp_path / "out"),
                          "--format", "onnx"], capture_output=True, text=True, timeout=120)
    assert "internal error" not in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["sizes"]["int8_onnx_bytes"] > 0
