"""The firmware examples run as a user runs them: real subprocesses, real models converted
by ``edgeship convert``, real onnxruntime and LiteRT, real files."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "firmware-examples"
FIXTURES = ROOT / "tests" / "fixtures"
IMAGES = EXAMPLES / "image-classifier"
VIBRATION = EXAMPLES / "vibration-anomaly"
LINE = re.compile(r"^(digit_\d{4}_label(\d)\.png)  class=(\d)  confidence=([01]\.\d{3})$")


def run(*args: str | Path, cwd: Path, stdin: str | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], cwd=cwd, input=stdin, capture_output=True,
                          text=True, timeout=timeout)


def python(script: Path, *args: str | Path, stdin: str | None = None
           ) -> subprocess.CompletedProcess[str]:
    return run(sys.executable, script, *args, cwd=script.parent, stdin=stdin)


def convert(model: Path, calib: Path, evaluate: Path, out: Path) -> Path:
    proc = run(sys.executable, "-m", "edgeship", "convert", model, "--calib", calib,
               "--eval", evaluate, "-o", out, "--format", "onnx,tflite", "-q", cwd=out.parent)
    assert proc.returncode == 0, proc.stderr
    return out


# ------------------------------------------------------------------ image classifier
@pytest.fixture(scope="module")
def cnn_int8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cnn") / "int8"
    return convert(FIXTURES / "cnn.onnx", FIXTURES / "cnn_calib.npz", FIXTURES / "cnn_eval.npz",
                   out)


@pytest.fixture(scope="module")
def digit_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    proc = python(IMAGES / "make_images.py", "--out", folder, "--count", "30",
                  "--npz", FIXTURES / "cnn_eval.npz")
    assert proc.returncode == 0, proc.stderr
    return folder


@pytest.mark.parametrize("artifact", ["model.int8.onnx", "model.int8.tflite"])
def test_image_classifier_prints_class_per_image(cnn_int8: Path, digit_images: Path,
                                                 artifact: str) -> None:
    proc = python(IMAGES / "classify.py", digit_images, "--model", cnn_int8 / artifact)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    matches = [LINE.match(line) for line in lines[:30]]
    assert all(matches), lines[:30]
    names = [m.group(1) for m in matches if m]
    assert names == sorted(p.name for p in digit_images.glob("*.png"))
    right = sum(m.group(2) == m.group(3) for m in matches if m)
    assert right >= 27  # the INT8 CNN is ~99 % accurate on this held-out split
    runtime = "litert" if artifact.endswith(".tflite") else "onnxruntime"
    assert f"classified 30 images with {artifact} ({runtime})" in lines[30]
    assert lines[31] == f"accuracy {right}/30 = {right / 30:.1%} (labels from file names)"


def test_image_classifier_reads_colour_pngs_from_another_encoder(cnn_int8: Path,
                                                                 tmp_path: Path) -> None:
    from PIL import Image  # an independent encoder (matplotlib's dependency), adaptive filters

    data = np.load(FIXTURES / "cnn_eval.npz")
    for i in range(8):
        grey = np.kron(data["input"][i, 0], np.ones((6, 6))) * 255
        rgb = np.stack([grey] * 3, axis=-1).round().astype(np.uint8)
        Image.fromarray(rgb, "RGB").save(tmp_path / f"digit_{i:04d}_label{data['label'][i]}.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    proc = python(IMAGES / "classify.py", tmp_path, "--model", cnn_int8 / "model.int8.tflite")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("broken.png  error: ")
    assert "classified 8 images" in proc.stdout
    assert re.search(r"accuracy [78]/8 ", proc.stdout), proc.stdout


def test_pngio_matches_pillow_on_every_filter(tmp_path: Path) -> None:
    from PIL import Image

    sys.path.insert(0, str(IMAGES))
    try:
        import pngio
    finally:
        sys.path.remove(str(IMAGES))
    rng = np.random.default_rng(0)
    smooth = np.cumsum(rng.integers(0, 3, (37, 29, 4)), axis=1).astype(np.uint8)
    for mode, pixels in (("RGBA", smooth), ("RGB", smooth[..., :3]), ("L", smooth[..., 0])):
        Image.fromarray(pixels, mode).save(tmp_path / "x.png", optimize=True)
        width, height, channels, raw = pngio.read_png(tmp_path / "x.png")
        got = np.frombuffer(raw, np.uint8).reshape(height, width, channels)
        assert (width, height) == (29, 37)
        assert np.array_equal(got.reshape(pixels.shape), pixels), mode
    pngio.write_png_grey(tmp_path / "g.png", 3, 2, bytes(range(6)))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "g.png")), [[0, 1, 2], [3, 4, 5]])


def test_image_classifier_missing_model_is_one_line(digit_images: Path, tmp_path: Path) -> None:
    proc = python(IMAGES / "classify.py", digit_images, "--model", tmp_path / "none.tflite")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: cannot read model") and "Traceback" not in proc.stderr


# ------------------------------------------------------------------ vibration anomaly
@pytest.fixture(scope="module")
def vibration_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("vibration")
    proc = python(VIBRATION / "train.py", "--out", folder)
    assert proc.returncode == 0, proc.stderr
    assert "held-out accuracy" in proc.stdout
    return convert(folder / "vibration.onnx", folder / "calib.npz", folder / "eval.npz",
                   folder / "int8")


@pytest.fixture(scope="module")
def sensor_csv() -> str:
    proc = python(VIBRATION / "sensor.py", "--windows", "50", "--fault-after", "30")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("artifact", ["model.int8.onnx", "model.int8.tflite"])
def test_vibration_alarm_after_fault_and_not_before(vibration_model: Path, sensor_csv: str,
                                                    artifact: str) -> None:
    proc = python(VIBRATION / "detect.py", "--model", vibration_model / artifact,
                  stdin=sensor_csv)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    verdicts = {int(m.group(1)): m.group(2) for m in (
        re.match(r"window +(\d+)  p_fault=[01]\.\d{3}  (ok|ANOMALY)$", line) for line in lines)
        if m}
    assert sorted(verdicts) == list(range(50))
    assert [i for i in range(30) if verdicts[i] == "ANOMALY"] == []  # healthy: no false alarm
    assert sum(verdicts[i] == "ANOMALY" for i in range(30, 50)) >= 18
    alarms = [line for line in lines if line.startswith("ALARM")]
    assert len(alarms) == 1 and int(re.search(r"window (\d+)", alarms[0]).group(1)) <= 34
    assert lines[-1].startswith("summary: 50 windows, ") and "model via local" in lines[-1]


def test_vibration_detect_skips_lines_that_are_not_windows(vibration_model: Path,
                                                           sensor_csv: str) -> None:
    first = sensor_csv.splitlines()[0]
    stdin = f"1,2,3\nhello,world\n{first}\n"
    proc = python(VIBRATION / "detect.py", "--model", vibration_model / "model.int8.tflite",
                  "--consecutive", "1", stdin=stdin)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out[0] == "window    0  skipped: 3 samples, expected 1024"
    assert out[1] == "window    1  skipped: not numbers"
    assert out[2].startswith("window    2  p_fault=") and out[2].endswith("ok")
    assert out[-1].startswith("summary: 1 windows, 0 anomalous, 0 alarm(s), 2 skipped")


# ------------------------------------------------------------------ examples via a real agent
class Agent:
    """``edgeship agent run`` serving one signed release (its ``initial``) on loopback."""

    def __init__(self, tmp: Path, artifact: Path, broker_url: str,
                 golden: Path | None = None) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        for args in (("keys", "init", tmp / "keys"),
                     ("release", artifact, "--version", "1.0.0", "--keys", tmp / "keys",
                      "-o", tmp / "rel", "--model-name", "model",
                      *(["--golden", golden] if golden else [])),
                     ("verify", tmp / "rel", "--root", tmp / "keys/root.pub")):
            proc = run(sys.executable, "-m", "edgeship", *args, cwd=tmp)
            assert proc.returncode == 0, proc.stderr
        config = tmp / "agent.toml"
        config.write_text(
            f'device_id = "dev-1"\nfleet = "examples"\ndata_dir = "{tmp / "data"}"\n'
            f'root_key = "{tmp / "keys/root.pub"}"\n\n[broker]\nurl = "{broker_url}"\n\n'
            f'[model]\nname = "model"\nthreads = 1\ninitial = "{tmp / "rel"}"\n\n'
            f'[api]\nlisten = "127.0.0.1:{self.port}"\n')
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgeship", "agent", "run", "--config", str(config)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait_serving(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "agent exited"
            try:
                with urllib.request.urlopen(f"{self.url}/v2/models/model", timeout=2) as r:
                    if json.load(r).get("versions"):
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError("agent did not serve its initial release")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def agent_factory(tmp_path: Path, shared_mosquitto: Any
                  ) -> Iterator[Callable[..., Agent]]:
    agents: list[Agent] = []

    def start(artifact: Path, golden: Path | None = None) -> Agent:
        agent = Agent(tmp_path / f"agent{len(agents)}", artifact, shared_mosquitto.url, golden)
        agents.append(agent)
        agent.wait_serving()
        return agent

    yield start
    for agent in agents:
        agent.stop()


def test_vibration_detector_asks_the_agent_then_falls_back(
        vibration_model: Path, sensor_csv: str, agent_factory: Callable[..., Agent]) -> None:
    # released with train.py's golden.npz: the agent health-checks it before serving
    agent = agent_factory(vibration_model / "model.int8.tflite",
                          vibration_model.parent / "golden.npz")
    local = python(VIBRATION / "detect.py", "--model", vibration_model / "model.int8.tflite",
                   stdin=sensor_csv)
    served = python(VIBRATION / "detect.py", "--agent", agent.url, stdin=sensor_csv)
    assert served.returncode == 0, served.stderr
    assert served.stdout.splitlines()[-1].endswith("model via agent")
    # the agent serves the same INT8 model: the same verdict for every window
    verdicts = [line.split("  ")[-1] for line in served.stdout.splitlines()[:50]]
    assert verdicts == [line.split("  ")[-1] for line in local.stdout.splitlines()[:50]]
    agent.stop()
    both = python(VIBRATION / "detect.py", "--agent", agent.url, "--model",
                  vibration_model / "model.int8.onnx", stdin=sensor_csv)
    assert both.returncode == 0, both.stderr
    assert both.stdout.splitlines()[-1].endswith("model via local (agent unreachable)")
    alone = python(VIBRATION / "detect.py", "--agent", agent.url, stdin=sensor_csv)
    assert alone.returncode == 2 and alone.stderr.startswith("error: ")


def test_image_classifier_asks_the_agent(cnn_int8: Path, digit_images: Path,
                                         agent_factory: Callable[..., Agent]) -> None:
    agent = agent_factory(cnn_int8 / "model.int8.onnx")
    proc = python(IMAGES / "classify.py", digit_images, "--agent", agent.url)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert all(LINE.match(line) for line in lines[:30])
    assert lines[30].startswith(f"classified 30 images with agent {agent.url} (release 1.0.0)")
    assert int(re.search(r"accuracy (\d+)/30", lines[31]).group(1)) >= 27


# ------------------------------------------------------------------ raspberry pi agent
PI = EXAMPLES / "raspberry-pi-agent"


@pytest.fixture(scope="module")
def device_secrets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root.pub from `edgeship keys init`, a device password from `fleet credentials`."""
    host = tmp_path_factory.mktemp("host")
    for args in (("keys", "init", host / "keys"),
                 ("fleet", "credentials", "--fleet", "plant-a", "--devices", "pi-042",
                  "-o", host / "creds")):
        proc = run(sys.executable, "-m", "edgeship", *args, cwd=host)
        assert proc.returncode == 0, proc.stderr
    (host / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    return host


def provision(*args: str | Path, secrets: Path) -> subprocess.CompletedProcess[str]:
    return run("sh", PI / "provision.sh", "--device-id", "pi-042", "--fleet", "plant-a",
               "--broker", "mqtts://broker.lan:8883", "--root-pub", secrets / "keys/root.pub",
               "--password-file", secrets / "creds/secrets/pi-042.password",
               "--ca", secrets / "ca.crt", "--python", sys.executable, *args, cwd=PI)


def test_pi_agent_toml_loads_with_the_agent_config_loader() -> None:
    from edgeship.agent._config import load_config

    config = load_config(PI / "agent.toml")
    assert (config.device_id, config.fleet, config.hardware) == ("pi-001", "plant-a", "rpi-arm64")
    assert str(config.root_key) == "/etc/edgeship/root.pub"
    assert config.broker.url.startswith("mqtts://")
    assert config.broker.password_file == "/etc/edgeship/broker.password"
    assert config.api.listen == "127.0.0.1:8500" and config.telemetry.interval_s < 90 / 2


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def test_pi_provision_dry_run_changes_nothing(device_secrets: Path, tmp_path: Path) -> None:
    proc = provision("--root", tmp_path, "--dry-run", secrets=device_secrets)
    assert proc.returncode == 0, proc.stderr
    assert list(tmp_path.iterdir()) == []
    steps = [line for line in proc.stdout.splitlines() if line.startswith("+ ")]
    assert any(s.endswith(f"{tmp_path}/etc/edgeship/root.pub") for s in steps)
    assert any("edgeship-agent.service.d/raspberry-pi.conf" in s for s in steps)
    assert not any("pip" in s or "useradd" in s or "systemctl" in s for s in steps)  # --root
    assert proc.stdout.rstrip().endswith("(dry run: nothing changed)")
    # without --root the plan is the full one: venv, user, ownership, service
    full = provision("--dry-run", secrets=device_secrets)
    assert full.returncode == 0, full.stderr
    for step in ("+ python3 -m venv /opt/edgeship/venv",
                 "+ chown root:edgeship /etc/edgeship/broker.password",
                 "+ systemctl enable --now edgeship-agent"):
        assert step in full.stdout, step
    assert ("+ useradd --system" in full.stdout) == (not _user_exists("edgeship"))


def test_pi_provision_lays_out_device_files(device_secrets: Path, tmp_path: Path) -> None:
    from edgeship.agent._config import load_config

    for _ in range(2):  # a second run (re-provisioning) must work the same
        proc = provision("--root", tmp_path, secrets=device_secrets)
        assert proc.returncode == 0, proc.stderr
    assert "agent.toml ok: device pi-042 in fleet plant-a" in proc.stdout
    etc = tmp_path / "etc/edgeship"
    modes = {p.name: p.stat().st_mode & 0o777 for p in etc.iterdir()}
    assert modes == {"agent.toml": 0o644, "root.pub": 0o644, "broker.password": 0o640,
                     "ca.crt": 0o644}
    assert (etc / "root.pub").read_bytes() == (device_secrets / "keys/root.pub").read_bytes()
    assert (etc / "broker.password").read_text() == (
        device_secrets / "creds/secrets/pi-042.password").read_text()
    config = load_config(etc / "agent.toml")
    assert (config.device_id, config.fleet, config.broker.username) == ("pi-042", "plant-a",
                                                                        "pi-042")
    assert config.broker.url == "mqtts://broker.lan:8883"
    assert config.broker.ca == "/etc/edgeship/ca.crt"
    assert str(config.root_key) == "/etc/edgeship/root.pub"  # the device's path, not the stage
    assert (tmp_path / "var/lib/edgeship").stat().st_mode & 0o777 == 0o750
    units = tmp_path / "etc/systemd/system"
    assert (units / "edgeship-agent.service").read_text() == (
        ROOT / "agent/edgeship-agent.service").read_text()
    assert (units / "edgeship-agent.service.d/raspberry-pi.conf").read_text() == (
        PI / "raspberry-pi.conf").read_text()
    assert not [p for p in etc.iterdir() if ".tmp." in p.name]


def test_pi_provision_refuses_private_key_and_bad_ids(device_secrets: Path,
                                                      tmp_path: Path) -> None:
    leaked = tmp_path / "root.pub"
    leaked.write_text((device_secrets / "keys/root.pub").read_text()
                      + "-----BEGIN PRIVATE KEY-----\nMC4CAQ\n-----END PRIVATE KEY-----\n")
    stage = tmp_path / "stage"
    stage.mkdir()
    proc = provision("--root", stage, "--root-pub", leaked, secrets=device_secrets)
    assert proc.returncode == 2 and "holds a PRIVATE key" in proc.stderr
    proc = provision("--root", stage, "--root-pub", device_secrets / "keys/root.key",
                     secrets=device_secrets)
    assert proc.returncode == 2 and "is not a PEM public key" in proc.stderr
    proc = provision("--root", stage, "--device-id", "pi/042", secrets=device_secrets)
    assert proc.returncode == 2 and "--device-id" in proc.stderr
    proc = provision("--root", stage, "--broker", "http://x", secrets=device_secrets)
    assert proc.returncode == 2 and "--broker" in proc.stderr
    assert list(stage.iterdir()) == []


def test_pi_systemd_unit_restarts_always_with_watchdog(tmp_path: Path) -> None:
    unit = (ROOT / "agent/edgeship-agent.service").read_text()
    dropin = (PI / "raspberry-pi.conf").read_text()
    effective = unit + dropin
    for line in ("Type=notify", "Restart=always", "User=edgeship",
                 "ExecStart=/opt/edgeship/venv/bin/edgeship agent run --config "
                 "/etc/edgeship/agent.toml"):
        assert f"\n{line}\n" in effective, line
    assert re.search(r"\nWatchdogSec=\d+\n", unit)
    assert dropin.index("ExecStart=\n") < dropin.index("ExecStart=/opt")  # reset, then set
    analyze = shutil.which("systemd-analyze")
    if analyze:  # offline check of every key's section and syntax, where systemd is around
        (tmp_path / "edgeship-agent.service.d").mkdir()
        (tmp_path / "edgeship-agent.service").write_text(unit)
        (tmp_path / "edgeship-agent.service.d/raspberry-pi.conf").write_text(dropin)
        proc = subprocess.run([analyze, "verify", str(tmp_path / "edgeship-agent.service")],
                              env={"SYSTEMD_UNIT_PATH": f"{tmp_path}:", "PATH": "/usr/bin:/bin"},
                              capture_output=True, text=True, timeout=60)
        complaints = [line for line in (proc.stdout + proc.stderr).splitlines()
                      if line.strip() and "is not executable" not in line
                      and "does not start with any known prefix" not in line]
        assert complaints == []


# ------------------------------------------------------------------ the READMEs stay true
def _readme_commands() -> list[tuple[Path, list[str]]]:
    """(example folder, argv) of every command line in the examples' shell blocks."""
    found = []
    for readme in sorted(EXAMPLES.glob("*/README.md")):
        text = readme.read_text()
        for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                for part in line.split("#")[0].split("|"):
                    argv = part.split()
                    if argv and argv[0] == "sudo":
                        argv = argv[1:]
                    if argv and (argv[0] in ("python", "edgeship") or argv[0].endswith(".sh")):
                        found.append((readme.parent, argv))
    return found


def test_readme_commands_name_real_scripts_commands_and_options() -> None:
    commands = _readme_commands()
    assert len(commands) >= 12
    helps: dict[tuple[str, ...], str] = {}
    for folder, argv in commands:
        if argv[0] == "python":
            key, cmd = (str(folder / argv[1]),), [sys.executable, folder / argv[1], "--help"]
            assert (folder / argv[1]).exists(), argv
        elif argv[0] == "edgeship":
            words = tuple(w for w in argv[1:3] if not w.startswith("-") and "/" not in w
                          and "." not in w)
            key, cmd = words, [sys.executable, "-m", "edgeship", *words, "--help"]
        else:
            key, cmd = (str(folder / argv[0]),), ["sh", folder / argv[0], "--help"]
        if key not in helps:
            proc = run(*cmd, cwd=folder)
            assert proc.returncode == 0, (argv, proc.stderr)
            helps[key] = proc.stdout
        for option in (a.split("=")[0] for a in argv if a.startswith("--")):
            assert option in helps[key], f"{' '.join(argv)}: {option} is not an option"
