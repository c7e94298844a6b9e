"""``edgeship demo``: the whole loop on this machine, with nothing set up beforehand.

Trains a small model on scikit-learn's digits, converts two versions to INT8 ONNX and
TFLite, makes keys, signs releases (encrypted for the device's key, with drift profiles),
starts a private mosquitto, a cloud model, a release server and one device agent, then
pushes v1, v2 as a delta into a shadow that is compared on live requests and promoted, a
forged update and a release whose health check fails, asks the agent questions between
the steps, and ends with inputs unlike the training data (a drift alert).

Every step goes through the same command line a user types (``python -m edgeship ...``)
so the demo shows the real tools; the long-running parts are child processes that are
stopped (their whole process group) however the demo ends. Everything is written under
the work dir, temporary files included.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeship._demo_procs import Processes, exit_on_termination, free_port, wait_http
from edgeship._errors import EdgeshipError, UpdateError

__all__ = ["DemoResult", "run_demo"]

_MARKER = ".edgeship-demo"
FLEET, DEVICE, MODEL_NAME = "demo", "demo-device-1", "digits"


@dataclass
class DemoResult:
    """What the demo saw; printed as the closing table and checked by the tests."""

    rows: list[tuple[str, str, str]] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)

    def add(self, step: str, outcome: str, detail: str = "") -> None:
        self.rows.append((step, outcome, detail))

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(self.checks.values())


def _prepare_workdir(workdir: Path) -> None:
    if workdir.exists() and any(workdir.iterdir()):
        if not (workdir / _MARKER).exists():
            raise EdgeshipError(f"--workdir {workdir} is not empty and was not made by the "
                                "demo; choose another directory")
        shutil.rmtree(workdir)
    (workdir / "tmp").mkdir(parents=True)
    (workdir / "logs").mkdir()
    (workdir / _MARKER).write_text("made by edgeship demo; removed by the next run\n")


class _Demo:
    def __init__(self, workdir: Path, broker_url: str | None, say: Any) -> None:
        self.work, self.say, self.broker_url = workdir, say, broker_url
        self.env = {**os.environ, "TMPDIR": str(workdir / "tmp"), "PYTHONUNBUFFERED": "1"}
        self.procs = Processes(workdir / "logs", self.env)
        self.result = DemoResult()
        self.data: Any = None
        self.stop_broker: Any = None
        self.cloud_port = self.api_port = 0

    # -- running the CLI --------------------------------------------------------------
    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "edgeship", *args], capture_output=True,
                              text=True, env=self.env, stdin=subprocess.DEVNULL, timeout=300)
        if check and proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise EdgeshipError(f"edgeship {args[0]} {args[1] if len(args) > 1 else ''} "
                                f"failed: {last}")
        return proc

    # -- the steps --------------------------------------------------------------------
    def build_models(self) -> None:
        import numpy as np

        from edgeship._demo_model import INPUT_NAME, export_mlp, load_digits_data, train_versions

        self.data = data = load_digits_data()
        v1, v2 = train_versions(data)
        models = self.work / "models"
        models.mkdir()
        export_mlp(v1, models / "digits-v1.onnx")
        export_mlp(v2, models / "digits-v2.onnx")
        np.savez(models / "calib.npz", **{INPUT_NAME: data.x_train[:300]})
        np.savez(models / "eval.npz", **{INPUT_NAME: data.x_test, "label": data.y_test})
        acc = [float((m.predict(data.x_test) == data.y_test).mean()) for m in (v1, v2)]
        self.result.add("train", "ok", f"MLP on sklearn digits: v1 {acc[0]:.1%}, v2 {acc[1]:.1%}")

    def convert(self) -> None:
        m = self.work / "models"
        common = ["--calib", str(m / "calib.npz"), "--eval", str(m / "eval.npz"), "-q"]
        self.cli("convert", str(m / "digits-v1.onnx"), "-o", str(self.work / "out-v1"), *common)
        self.cli("convert", str(m / "digits-v2.onnx"), "-o", str(self.work / "out-v2"),
                 "--base", str(self.work / "out-v1"), *common)
        report = json.loads((self.work / "out-v2" / "report.json").read_text())
        self.result.add("convert", "ok", _convert_detail(report))

    def sign(self) -> None:
        import numpy as np

        from edgeship._demo_model import INPUT_NAME

        keys, rel = self.work / "keys", self.work / "releases"
        self.cli("keys", "init", str(keys))
        self.cli("keys", "fleet-key", str(keys), "--name", "device")  # the device's own key
        self.cli("keys", "init", str(self.work / "attacker-keys"))
        x = self.data.x_test[:1]
        for name, onnx_path in (("golden-v1", "digits-v1.onnx"), ("golden-v2", "digits-v2.onnx")):
            np.savez(self.work / f"{name}.npz",
                     **{INPUT_NAME: x, "output": _fp32_output(self.work / "models" / onnx_path, x)})
        # a release whose golden output cannot match: its health check must fail on the device
        wrong = np.roll(_fp32_output(self.work / "models" / "digits-v2.onnx", x), 3, axis=-1)
        np.savez(self.work / "golden-bad.npz", **{INPUT_NAME: x, "output": wrong, "atol": 0.05})
        art = "model.int8.tflite"
        sealed = ["--encrypt-for", str(keys / "device.pub")]  # only this device can open them
        self._release(self.work / "out-v1" / art, "1.0.0", keys, rel / "v1", "golden-v1",
                      extra=[*sealed, "--profile", str(self.work / "out-v1" / "profile.json")])
        self._release(self.work / "out-v2" / art, "1.1.0", keys, rel / "v2", "golden-v2",
                      base=rel / "v1",
                      extra=[*sealed, "--profile", str(self.work / "out-v2" / "profile.json")])
        self._release(self.work / "out-v2" / art, "1.2.0", keys, rel / "bad", "golden-bad",
                      base=rel / "v2", extra=sealed)
        self._release(self.work / "out-v2" / art, "9.0.0", self.work / "attacker-keys",
                      rel / "forged", "golden-v2")
        self.cli("verify", str(rel / "v2"), "--root", str(keys / "root.pub"))
        forged = self.cli("verify", str(rel / "forged"), "--root", str(keys / "root.pub"),
                          check=False)
        self.result.checks["forged release fails `edgeship verify`"] = forged.returncode != 0
        manifest = json.loads((rel / "v2" / "manifest.json").read_text())["signed"]
        delta = min(d["size"] for d in manifest["deltas"])
        full = manifest["artifact"]["size"]
        self.result.add("sign", "ok", f"v1.0.0, v1.1.0 (delta {delta} B = {delta / full:.1%} "
                        f"of {full} B), a bad 1.2.0 (all encrypted for the device's key, "
                        "with drift profiles), and a forged 9.0.0")

    def _release(self, artifact: Path, version: str, keys: Path, out: Path, golden: str,
                 base: Path | None = None, extra: list[str] | None = None) -> None:
        args = ["release", str(artifact), "--version", version, "--keys", str(keys),
                "-o", str(out), "--model-name", MODEL_NAME,
                "--golden", str(self.work / f"{golden}.npz"), *(extra or [])]
        self.cli(*args, *(["--base", str(base)] if base else []))

    def start_services(self) -> None:
        from edgeship.sdk.transport._broker import LocalBroker

        if self.broker_url is None:
            broker = LocalBroker()
            broker.start()
            self.stop_broker = broker.stop
            self.broker_url = broker.url
        self.cloud_port, self.api_port = free_port(), free_port()
        self.procs.start("cloud", "cloud", "serve", str(self.work / "models" / "digits-v2.onnx"),
                         "--name", MODEL_NAME, "--port", str(self.cloud_port))
        releases = [str(self.work / "releases" / r) for r in ("v1", "v2", "bad", "forged")]
        self.procs.start("release-server", "fleet", "serve", "--broker", self.broker_url,
                         "--releases", *releases)
        config = self.agent_config(self.api_port, self.cloud_port)
        self.procs.start("agent", "agent", "run", "--config", str(config))
        wait_http(f"http://127.0.0.1:{self.cloud_port}/v2/health/ready", 30)
        wait_http(f"http://127.0.0.1:{self.api_port}/v2/health/live", 30)
        where = "a private mosquitto" if self.stop_broker else "the given broker"
        self.result.add("services", "ok", f"{where} at {self.broker_url}, release server, "
                        f"cloud model on :{self.cloud_port}, agent API on :{self.api_port}")

    def agent_config(self, api_port: int, cloud_port: int) -> Path:
        text = f"""
device_id = "{DEVICE}"
fleet = "{FLEET}"
data_dir = "{self.work / 'device'}"
root_key = "{self.work / 'keys' / 'root.pub'}"

[broker]
url = "{self.broker_url}"

[model]
name = "{MODEL_NAME}"
threads = 1

[api]
listen = "127.0.0.1:{api_port}"

[ota]
chunk_size = 16384
health_timeout_s = 30

[telemetry]
interval_s = 1

[encryption]
key_file = "{self.work / 'keys' / 'device.key'}"

[drift]
window = 400
min_samples = 200
max_rate = 0  # count every request: the demo asks its 300 questions within a second

[shadow]
sample = 1.0

[fallback]
url = "http://127.0.0.1:{cloud_port}"
model = "{MODEL_NAME}"
deadline_ms = 1000
policy = ["no_model", "on_error", "low_confidence"]
confidence = 0.6
"""
        path = self.work / "agent.toml"
        path.write_text(text)
        return path

    def run(self) -> None:
        steps = [
            ("train a digits classifier, v1 and a retrained v2", self.build_models),
            ("convert both to INT8 ONNX + TFLite (v2 reuses v1's quantization)", self.convert),
            ("make keys, sign releases (with a delta from the previous one)", self.sign),
            ("start broker, cloud model, release server and a device agent",
             self.start_services),
            ("ask the device before it has any model", self.ask_without_model),
            ("push v1.0.0 (full artifact)", self.push_v1),
            ("push v1.1.0 as a shadow (signed, encrypted delta) and compare", self.shadow_v2),
            ("promote the shadow v1.1.0", self.promote_v2),
            ("push a forged 9.0.0 signed by an unknown key", self.push_forged),
            ("push 1.2.0 whose health check fails", self.push_bad),
            ("ask an easy and a hard question", self.escalate),
            ("feed the device inputs unlike the training data", self.drift),
        ]
        for i, (title, step) in enumerate(steps, 1):
            started = time.monotonic()
            self.say(f"[{i}/{len(steps)}] {title} ...")
            step()
            self.say(f"      done in {time.monotonic() - started:.1f}s: {self.result.rows[-1][2]}")

    def client(self) -> Any:
        from edgeship.sdk import AgentClient

        return AgentClient(f"http://127.0.0.1:{self.api_port}", model=MODEL_NAME, timeout=10)

    def ask(self, x: Any) -> Any:
        from edgeship._demo_model import INPUT_NAME

        with self.client() as client:
            return client.infer({INPUT_NAME: x.reshape(1, -1)})

    def ask_without_model(self) -> None:
        answer = self.ask(self.data.x_test[0])
        self.result.checks["no local model: the cloud answers"] = answer.source == "cloud"
        self.result.add("no model yet", answer.source, f"digit {_digit(answer)} from the "
                        f"{answer.source} (truth {self.data.y_test[0]})")

    def push_and_check(self, reldir: str, version: str, expected: str, check: str,
                       *flags: str, command: str = "push") -> str:
        report = self.push(reldir, *flags, command=command)
        device = report["devices"].get(DEVICE, {})
        outcome = str(device.get("outcome"))
        with self.client() as client:
            serving = ",".join(client.metadata().versions)
        self.result.checks[check] = outcome == expected
        detail = f"device {outcome}; serving {serving}"
        if device.get("error"):
            detail += f" ({device['error']})"
        self.result.add(f"push {version}", outcome, detail)
        return serving

    def push_v1(self) -> None:
        serving = self.push_and_check("v1", "1.0.0", "committed", "v1.0.0 committed")
        self.result.checks["v1.0.0 serves locally"] = (
            serving == "1.0.0" and self.ask(self.data.x_test[1]).source == "local")

    def shadow_v2(self) -> None:
        serving = self.push_and_check("v2", "1.1.0", "shadowing", "delta update installed as a "
                                      "shadow", "--shadow")
        answers: list[Any] = []
        stats: dict[str, Any] = {}
        deadline = time.monotonic() + 30
        # live traffic until the shadow (loading in its own process) has compared enough
        while (stats.get("compared") or 0) < 50 and time.monotonic() < deadline:
            start = len(answers) % len(self.data.x_test)
            answers += [self.ask(x) for x in self.data.x_test[start:start + 25]]
            stats = self.wait_status(lambda s: True).get("shadow") or {}
        local = {a.version for a in answers if a.source == "local"}  # (doubtful: cloud)
        self.result.checks["answers come from v1.0.0 while v1.1.0 shadows"] = (
            serving == "1.0.0" and local == {"1.0.0"})
        self.result.checks["the shadow reports agreement on live requests"] = (
            stats.get("agreement") is not None)
        self.result.add("shadow", "agreement", f"v1.1.0 agrees with v1.0.0 on "
                        f"{stats.get('agreement', 0):.0%} of {stats.get('compared')} requests")
        plain = [(self.work / f"out-{v}" / "model.int8.tflite").read_bytes() for v in ("v1", "v2")]
        self.result.checks["no plaintext model on the device's disk"] = not any(
            _holds_any_window(path.read_bytes(), model) for model in plain
            for path in (self.work / "device").rglob("*") if path.is_file())

    def promote_v2(self) -> None:
        serving = self.push_and_check("v2", "1.1.0", "committed", "promoted shadow committed",
                                      command="promote")
        self.result.checks["v1.1.0 serves after the promotion"] = serving == "1.1.0"

    def drift(self) -> None:
        import numpy as np

        if (self.wait_status(lambda s: True).get("drift") or {}).get("alert"):
            self.result.checks["no drift alert on data like the training data"] = False
        rng = np.random.default_rng(7)
        for x in self.data.x_test[:300]:  # a dirty lens: dimmer, with speckles
            self.ask(np.clip(x * 0.4 + rng.uniform(0, 8, x.shape), 0, 16).astype(np.float32))
        status = self.wait_status(lambda s: bool((s.get("drift") or {}).get("alert")))
        drift = status.get("drift") or {}
        self.result.checks["drift alert raised on shifted inputs"] = bool(drift.get("alert"))
        self.result.add("drift", "alert" if drift.get("alert") else "none",
                        f"PSI {drift.get('max_psi')} on {drift.get('worst')} over "
                        f"{drift.get('window')} requests")

    def wait_status(self, done: Any, timeout: float = 15.0) -> dict[str, Any]:
        """The device's retained status from `fleet status --json`, once ``done`` holds."""
        deadline = time.monotonic() + timeout
        while True:
            proc = self.cli("fleet", "status", "--broker", str(self.broker_url), "--fleet",
                            FLEET, "--json", check=False)
            try:
                devices = json.loads(proc.stdout).get("devices", [])
            except json.JSONDecodeError:
                devices = []
            status: dict[str, Any] = next((d for d in devices if d.get("device") == DEVICE), {})
            if done(status) or time.monotonic() > deadline:
                return status
            time.sleep(0.5)

    def push_forged(self) -> None:
        serving = self.push_and_check("forged", "9.0.0", "failed", "forged update rejected")
        self.result.checks["still serving 1.1.0 after the forgery"] = serving == "1.1.0"

    def push_bad(self) -> None:
        serving = self.push_and_check("bad", "1.2.0", "rolled-back", "bad release rolled back")
        self.result.checks["still serving 1.1.0 after the rollback"] = serving == "1.1.0"

    def escalate(self) -> None:
        easy = self.ask(self.data.x_test[2])
        hard_x = _hard_input(self.work / "out-v2" / "model.int8.tflite", self.data.x_test)
        hard = self.ask(hard_x)
        self.result.checks["confident answer stays local"] = easy.source == "local"
        self.result.checks["low-confidence answer escalated to the cloud"] = hard.source == "cloud"
        self.result.add("escalation", hard.source, f"easy digit {_digit(easy)} from "
                        f"{easy.source}; a blurred blend from {hard.source}")

    def push(self, reldir: str, *flags: str, command: str = "push") -> dict[str, Any]:
        proc = self.cli("fleet", command, str(self.work / "releases" / reldir), "--broker",
                        str(self.broker_url), "--fleet", FLEET, "--devices", DEVICE, "--wait",
                        "--wave-timeout", "60", "--json", "--state",
                        str(self.work / "fleet.sqlite"), *flags, check=False)
        try:
            report: dict[str, Any] = json.loads(proc.stdout)
        except json.JSONDecodeError as exc:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise UpdateError(f"fleet push {reldir}: {last}") from exc
        return report


def _holds_any_window(data: bytes, plaintext: bytes, window: int = 64) -> bool:
    """Whether ``data`` contains any ``window``-byte run of ``plaintext`` (every aligned
    run of half the size is looked up: any ``window``-long match contains one). Runs of
    a few distinct bytes (zero padding) are in any file and prove nothing: skipped."""
    step = window // 2
    runs = (plaintext[i:i + step] for i in range(0, len(plaintext) - step, step))
    return any(run in data for run in runs if len(set(run)) >= step // 2)


def _digit(answer: Any) -> int:
    import numpy as np

    return int(np.argmax(next(iter(answer.outputs.values()))))


def _hard_input(model_path: Path, x_test: Any) -> Any:
    """A blend of two different digits on which the local model is unsure."""
    import numpy as np

    from edgeship.sdk import Model

    model = Model.load(model_path)
    best, best_conf = x_test[0], 1.0
    for i in range(1, min(len(x_test), 200)):
        blend = (0.5 * x_test[0] + 0.5 * x_test[i]).astype(np.float32)
        conf = float(np.max(model.predict(blend.reshape(1, -1))))
        if conf < best_conf:
            best, best_conf = blend, conf
        if conf < 0.45:
            break
    return best


def _fp32_output(onnx_path: Path, x: Any) -> Any:
    import onnxruntime as ort

    from edgeship.sdk._quiet import ort_log_level

    options = ort.SessionOptions()
    options.log_severity_level = ort_log_level()
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _convert_detail(report: dict[str, Any]) -> str:
    sizes = report.get("sizes") or {}
    fp32, int8 = sizes.get("fp32_bytes"), sizes.get("int8_onnx_bytes")
    text = "INT8 ONNX + TFLite"
    if fp32 and int8:
        text += f", {int8 / fp32:.2f}x fp32 size"
    evaluation = report.get("eval") or {}
    if evaluation.get("int8_accuracy") is not None:
        text += (f", accuracy fp32 {evaluation['fp32_accuracy']:.1f}% -> int8 "
                 f"{evaluation['int8_accuracy']:.1f}%")
    return text


def run_demo(workdir: Path, *, broker_url: str | None = None, say: Any = print) -> DemoResult:
    """Run the whole loop in ``workdir`` and return what it saw (see module docstring)."""
    import tempfile

    workdir = workdir.resolve()
    _prepare_workdir(workdir)
    demo = _Demo(workdir, broker_url, say)
    saved_tempdir, tempfile.tempdir = tempfile.tempdir, str(workdir / "tmp")
    saved_handlers = exit_on_termination()
    try:
        demo.run()
    finally:
        for sig, handler in saved_handlers.items():
            signal.signal(sig, handler)
        tempfile.tempdir = saved_tempdir
        demo.procs.stop_all()
        if demo.stop_broker is not None:
            demo.stop_broker()
    return demo.result
