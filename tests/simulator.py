"""A device simulator for fleet tests and benchmarks: many devices in one process.

Each simulated device is the agent's own pure OTA core
(:class:`edgeship.agent._ota.OtaCore`, which verifies offers and payloads with the sdk's
``check_offer`` / ``check_payload``) driven by a small in-memory shell, with its own MQTT
5 session (:class:`edgeship.sdk.transport._mqtt.MqttEdge`, its own client id and socket). What is
simulated is only the hardware: slots and the state file live in memory, and the golden
health check runs the real model once per distinct artifact in the process (a cache: the
sha256 the core verified pins the bytes). A device made ``broken`` has a faulty
accelerator: every model other than the one it started with gives outputs off by one, so
the real golden check fails on it.

A shadow release (``LoadShadow``) is "run" by comparing it with the active model on a
fixed set of random inputs (real models, once per pair in the process); the figures are
merged into the status's ``shadow`` like the agent daemon's shadow tap does.

All sessions of a process are driven by one epoll loop (paho's ``loop_read`` /
``loop_write`` / ``loop_misc``). Run as a program::

    python tests/simulator.py --broker mqtt://127.0.0.1:1883 --fleet f --root ROOT.pub \
        --initial RELDIR --prefix dev- --start 0 --count 100 [--broken dev-003,...]

It prints ``{"ready": N}`` once every device is connected and serving its initial
release, then runs until SIGTERM/SIGINT and prints its counters as one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import selectors
import signal
import sys
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgeship.agent import _ota as ota
from edgeship.sdk.transport._mqtt import Message, MqttEdge, request_topic, topics
from edgeship.sdk.transport._transfer import encode_request


class HealthLab:
    """The golden check of each distinct (artifact, golden, faulty) once per process, and
    the process's shared copies of slot contents."""

    def __init__(self) -> None:
        self.cache: dict[tuple[str, str, bool], str | None] = {}
        self.blobs: dict[str, bytes] = {}  # content-addressed: one copy of each artifact
        self.shadows: dict[tuple[str, str, int], dict[str, Any]] = {}
        self._digests: dict[int, str] = {}  # id() of a shared copy -> its sha256
        self.patches: dict[tuple[str, str], bytes] = {}  # (base, delta) sha256 -> output

    def store(self, data: bytes) -> bytes:
        """The shared copy of ``data`` (a thousand devices need not hold a thousand)."""
        shared = self.blobs.setdefault(self.sha(data), data)
        self._digests[id(shared)] = self.sha(data)
        return shared

    def sha(self, data: bytes) -> str:
        """sha256 of ``data``; of a shared copy (held in ``blobs``, so its id() is never
        reused) computed once: the simulator's own bookkeeping, not a device's check."""
        known = self._digests.get(id(data))
        if known is not None and self.blobs.get(known) is data:
            return known
        return hashlib.sha256(data).hexdigest()

    def apply_delta(self, real: Any) -> Any:
        """``real`` (sdk ``apply_delta``) applied once per distinct (base, delta) in the
        process: a pure function whose output the device's OTA core still verifies
        (sha256 against the signed manifest) every time. What it saves is the host CPU
        that a thousand devices' own CPUs would spend (bz2 + bspatch, ~15 ms each)."""

        def cached(base: bytes, delta: bytes, fmt: str, **kw: Any) -> bytes:
            key = (self.sha(base), hashlib.sha256(delta).hexdigest())
            if key not in self.patches:
                self.patches[key] = self.store(real(base, delta, fmt, **kw))
            return self.patches[key]

        return cached

    def agreement(self, active: bytes, shadow: bytes, fmt: str, rows: int = 64
                  ) -> dict[str, Any]:
        """Shadow figures of ``shadow`` beside ``active`` on ``rows`` random requests."""
        key = (self.sha(active), self.sha(shadow), rows)
        if key not in self.shadows:
            self.shadows[key] = self._compare(active, shadow, fmt, rows)
        return self.shadows[key]

    @staticmethod
    def _compare(active: bytes, shadow: bytes, fmt: str, rows: int) -> dict[str, Any]:
        import numpy as np
        from edgeship.agent._shadow import compare_outputs
        from edgeship.sdk.runtime._model import Model

        a, s = Model.from_bytes(active, fmt, threads=1), Model.from_bytes(shadow, fmt, threads=1)
        rng = np.random.default_rng(0)
        agreed, worst = 0, 0.0
        for _ in range(rows):
            feeds = {spec.name: rng.normal(size=[d if d > 0 else 1 for d in spec.shape])
                     .astype(spec.dtype) for spec in a.inputs}
            agree, diff = compare_outputs(a.predict_all(feeds), s.predict_all(feeds), 1e-3)
            agreed += agree
            worst = max(worst, diff or 0.0)
        return {"state": "running", "sampled": rows, "compared": rows,
                "agreement": round(agreed / rows, 4), "max_abs_diff": worst, "dropped": 0,
                "errors": 0}

    def check(self, data: bytes, fmt: str, golden: dict[str, Any] | None, faulty: bool
              ) -> str | None:
        key = (self.sha(data), json.dumps(golden, sort_keys=True), faulty)
        if key not in self.cache:
            self.cache[key] = self._run(data, fmt, golden, faulty)
        return self.cache[key]

    @staticmethod
    def _run(data: bytes, fmt: str, golden: dict[str, Any] | None, faulty: bool) -> str | None:
        from edgeship.agent._health import golden_check
        from edgeship.sdk.runtime._model import Model

        try:
            model: Any = Model.from_bytes(data, fmt, threads=1)
            if faulty:
                model = _FaultyAccelerator(model)
            return golden_check(model, golden)
        except Exception as exc:  # a model that does not load fails its check
            return f"{type(exc).__name__}: {exc}"


class _FaultyAccelerator:
    """A model on broken hardware: every output is off by one."""

    def __init__(self, model: Any) -> None:
        self.model, self.inputs, self.outputs = model, model.inputs, model.outputs

    def predict_all(self, feeds: dict[str, Any]) -> dict[str, Any]:
        return {k: v + 1.0 for k, v in self.model.predict_all(feeds).items()}


class SimDevice:
    """One device: the agent's OTA core, memory 'flash', its own MQTT session."""

    def __init__(self, *, device: str, fleet: str, broker_url: str, root_key: bytes,
                 model: str = "model", broken: bool = False, chunk_size: int = 64 * 1024,
                 request_timeout_s: float = 2.0, lab: HealthLab, username: str = "",
                 password: str = "") -> None:
        self.device, self.fleet, self.broken, self.lab = device, fleet, broken, lab
        self.core = ota.OtaCore(device=device, model=model, root_key=root_key,
                                chunk_size=chunk_size)
        self.state = ota.OtaState()
        self.flash = b""  # the persisted state file
        self.download = bytearray()
        self.slots: dict[str, bytes] = {}
        self.shadow_stats: dict[str, Any] | None = None  # the shadow tap's figures
        self.factory_sha = ""
        self.topics = topics(fleet, device)
        self.request_timeout_s = request_timeout_s
        self.last_request = 0.0
        self.events: deque[ota.Event] = deque()
        self.counters = {"msgs_in": 0, "bytes_in": 0, "msgs_out": 0, "bytes_out": 0}
        self.edge = MqttEdge(broker_url, client_id=f"edgeship-{fleet}-{device}",
                             subscriptions=[self.topics.offer, self.topics.chunk],
                             on_message=self._on_message, on_connect=self._on_connect,
                             username=username, password=password, keepalive=60)

    # -- inputs -------------------------------------------------------------------------
    def _on_message(self, msg: Message) -> None:
        self.counters["msgs_in"] += 1
        self.counters["bytes_in"] += len(msg.payload)
        if msg.topic == self.topics.offer and msg.payload:
            self.events.append(ota.OfferReceived(msg.payload))
        elif msg.topic == self.topics.chunk:
            self.events.append(ota.Chunk(msg.payload))

    def _on_connect(self) -> None:
        self.events.append(ota.Connected())

    def install_initial(self, offer: bytes, artifact: bytes) -> None:
        self.dispatch(ota.LocalRelease(offer=offer, artifact=artifact))
        if self.state.active is None:
            raise RuntimeError(f"{self.device}: initial release refused: {self.state.error}")
        self.factory_sha = self.state.active.sha256
        self.dispatch(ota.Resume())

    def pump(self, now: float) -> None:
        """Handle what arrived; re-ask for an overdue chunk (``now``: monotonic seconds)."""
        while self.events:
            self.dispatch(self.events.popleft())
        if (self.state.phase == "downloading" and self.edge.connected
                and now - self.last_request > self.request_timeout_s):
            self.dispatch(ota.Tick())

    def dispatch(self, event: ota.Event) -> None:
        pending = [event]
        while pending:
            self.state, actions = self.core.step(self.state, pending.pop(0), time.time())
            for action in actions:
                follow = getattr(self, f"_do_{type(action).__name__}")(action)
                if follow is not None:
                    pending.append(follow)

    # -- actions (the agent daemon's, in memory) ---------------------------------------------
    def _publish(self, topic: str, payload: bytes, **kw: Any) -> None:
        if self.edge.publish(topic, payload, **kw) is not None:
            self.counters["msgs_out"] += 1
            self.counters["bytes_out"] += len(payload)

    def _do_Persist(self, action: ota.Persist) -> None:
        self.flash = ota.encode_state(action.state)

    def _do_Rejected(self, action: Any) -> None:
        pass

    def _do_Report(self, action: ota.Report) -> None:
        status = dict(action.status)
        if status.get("shadow") and self.shadow_stats is not None:  # as the daemon's taps do
            status["shadow"] = {**self.shadow_stats, **status["shadow"]}
        self._publish(self.topics.status, json.dumps(status).encode(), retain=True)

    def _do_LoadShadow(self, action: Any) -> None:
        slot, active = action.slot, self.state.active
        data = self.slots.get(slot.slot, b"")
        if active is None or self.lab.sha(data) != slot.sha256:
            self.shadow_stats = {"state": "crashed", "sampled": 0, "compared": 0,
                                 "agreement": None, "errors": 1}
            return
        self.shadow_stats = self.lab.agreement(self.slots[active.slot], data, slot.format)

    def _do_UnloadShadow(self, action: Any) -> None:
        self.shadow_stats = None

    def _do_RequestChunk(self, action: ota.RequestChunk) -> None:
        req = action.request
        self.last_request = time.monotonic()
        self._publish(request_topic(self.fleet, self.device), encode_request(req),
                      response_topic=self.topics.chunk,
                      correlation=action.correlation or ota.correlation(req))

    def _do_TruncateDownload(self, action: ota.TruncateDownload) -> None:
        del self.download[action.size:]

    def _do_WriteChunk(self, action: ota.WriteChunk) -> None:
        if len(self.download) < action.offset:
            self.download.extend(b"\0" * (action.offset - len(self.download)))
        self.download[action.offset:action.offset + len(action.data)] = action.data

    def _do_ReadDownload(self, action: ota.ReadDownload) -> ota.Event:
        base = self.slots.get(action.base_slot) if action.base_slot else None
        return ota.Downloaded(payload=bytes(self.download), base=base)

    def _do_WriteSlot(self, action: ota.WriteSlot) -> ota.Event:
        self.slots[action.slot] = self.lab.store(action.data)
        return ota.Installed()

    def _faulty(self, data: bytes) -> bool:
        return self.broken and bool(self.factory_sha) and self.lab.sha(data) != self.factory_sha

    def _do_RunHealthCheck(self, action: ota.RunHealthCheck) -> ota.Event:
        data = self.slots[action.slot]
        reason = self.lab.check(data, action.format, action.golden, self._faulty(data))
        return ota.HealthChecked(ok=reason is None, reason=reason or "")

    def _do_LoadActive(self, action: ota.LoadActive) -> ota.Event:
        slot = action.slot
        data = self.slots.get(slot.slot, b"")
        if self.lab.sha(data) != slot.sha256:
            return ota.Loaded(slot.slot, False, f"slot {slot.slot} does not hold {slot.version}")
        if action.golden is not None:
            reason = self.lab.check(data, slot.format, action.golden, self._faulty(data))
            if reason:
                return ota.Loaded(slot.slot, False, reason)
        return ota.Loaded(slot.slot, True)


class Swarm:
    """Drives the MQTT sessions of many :class:`SimDevice` with one epoll loop.

    A round touches only the devices whose socket was ready (and those whose chunk
    request may be overdue, or who lost their connection, in a sweep over all every
    ``sweep_s``): with thousands of devices per process a round costs what happened in
    it, not the size of the swarm."""

    def __init__(self, devices: list[SimDevice], sweep_s: float = 1.0) -> None:
        self.devices = devices
        self.sel = selectors.DefaultSelector()
        self._registered: dict[SimDevice, tuple[Any, int]] = {}
        self._next_sweep = 0.0
        self.sweep_s = sweep_s
        self._live = 0  # devices[:_live] were started (connect() starts them batch by batch)

    def connect(self, timeout: float = 60.0, batch: int = 50) -> None:
        """Connect every device, ``batch`` at a time (thousands of blocking connects at
        once overflow the broker's listen backlog; each batch gets ``timeout`` s)."""
        for start in range(0, len(self.devices), batch):
            group = self.devices[start:start + batch]
            self._live = start + len(group)  # a sweep must not connect the next batches
            for dev in group:
                dev.edge.connect_now()  # TCP connect + CONNECT; the rest through the loop
                self._register(dev)
            deadline = time.monotonic() + timeout
            while not all(d.edge.connected for d in group):
                if time.monotonic() > deadline:
                    missing = [d.device for d in group if not d.edge.connected]
                    raise RuntimeError(f"{len(missing)} devices not connected: {missing[:5]}")
                self.run_once(0.05)

    def run_once(self, timeout: float = 0.05) -> None:
        touched: list[SimDevice] = []
        for key, mask in self.sel.select(timeout):
            dev = key.data
            if mask & selectors.EVENT_READ:
                dev.edge.loop_read()
            if mask & selectors.EVENT_WRITE:
                dev.edge.loop_write()
            touched.append(dev)
        now = time.monotonic()
        if now >= self._next_sweep:  # keepalives, reconnects, overdue chunk requests
            self._next_sweep = now + self.sweep_s
            touched = self.devices[:self._live]
            for dev in touched:
                dev.edge.loop_misc()
        for dev in touched:
            dev.pump(now)
            if dev.edge.want_write():
                dev.edge.loop_write()
            self._register(dev)

    def _register(self, dev: SimDevice) -> None:
        sock = dev.edge.socket()
        if sock is None:  # dropped: reconnect with the edge's own backoff
            old = self._registered.pop(dev, None)
            if old is not None:
                self._unregister_quiet(old[0])
            dev.edge.connect_now()
            sock = dev.edge.socket()
            if sock is None:
                return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if dev.edge.want_write() else 0)
        old = self._registered.get(dev)
        if old is None or old[0] is not sock:
            if old is not None:
                self._unregister_quiet(old[0])
            stale = self.sel.get_map().get(sock.fileno())
            if stale is not None:  # another device's closed socket had this descriptor
                self._registered.pop(stale.data, None)
                self._unregister_quiet(stale.fileobj)
            self.sel.register(sock, events, dev)
        elif old[1] != events:
            self.sel.modify(sock, events, dev)
        self._registered[dev] = (sock, events)

    def _unregister_quiet(self, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(sock)

    def counters(self) -> dict[str, Any]:
        total = {"devices": len(self.devices)}
        for dev in self.devices:
            for k, v in dev.counters.items():
                total[k] = total.get(k, 0) + v
        phases: dict[str, int] = {}
        for dev in self.devices:
            phases[dev.state.phase] = phases.get(dev.state.phase, 0) + 1
        versions: dict[str, int] = {}
        for dev in self.devices:
            v = dev.state.active.version if dev.state.active else "none"
            versions[v] = versions.get(v, 0) + 1
        return {**total, "phases": phases, "versions": versions}


class SwarmProc:
    """This program as a subprocess (for tests and benchmarks)."""

    def __init__(self, *, broker_url: str, fleet: str, root: Path, initial: Path,
                 devices: list[str] | None = None, prefix: str = "dev-", start: int = 0,
                 count: int = 10, broken: list[str] | None = None, chunk_size: int = 64 * 1024,
                 request_timeout_s: float = 2.0, credentials: Path | None = None,
                 python_args: Sequence[str] = ()) -> None:
        import subprocess

        cmd = [sys.executable, *python_args, str(Path(__file__).resolve()), "--broker", broker_url,
               "--fleet", fleet, "--root", str(root), "--initial", str(initial),
               "--prefix", prefix, "--start", str(start), "--count", str(count),
               "--chunk-size", str(chunk_size), "--request-timeout", str(request_timeout_s)]
        if devices:
            cmd += ["--devices", ",".join(devices)]
        if broken:
            cmd += ["--broken", ",".join(broken)]
        if credentials:
            cmd += ["--credentials", str(credentials)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                     text=True)

    def wait_ready(self, timeout: float = 120.0) -> int:
        import select as _select

        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = _select.select([self.proc.stdout], [], [], 0.5)
            if ready:
                line = self.proc.stdout.readline()
                if not line:
                    break
                return int(json.loads(line)["ready"])
            if self.proc.poll() is not None:
                break
        raise RuntimeError(f"simulator not ready (exit code {self.proc.poll()})")

    def stop(self, timeout: float = 30.0) -> dict[str, Any]:
        """SIGTERM; the counters it printed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=timeout)
        lines = [ln for ln in out.splitlines() if ln.strip()]
        return json.loads(lines[-1]) if lines else {}


def build_swarm(args: argparse.Namespace) -> Swarm:
    from edgeship.sdk.release._release import Release

    names = args.devices.split(",") if args.devices else \
        [f"{args.prefix}{i:04d}" for i in range(args.start, args.start + args.count)]
    broken = set(filter(None, (args.broken or "").split(",")))
    creds = json.loads(Path(args.credentials).read_text()) if args.credentials else {}
    release = Release.load(args.initial)
    offer, artifact = release.offer().to_bytes(), release.read_artifact()
    root = Path(args.root).read_bytes()
    lab = HealthLab()
    from edgeship.sdk.release import _delta

    _delta.apply_delta = lab.apply_delta(_delta.apply_delta)  # type: ignore[assignment]
    devices = []
    for name in names:
        dev = SimDevice(device=name, fleet=args.fleet, broker_url=args.broker, root_key=root,
                        model=release.manifest.model, broken=name in broken,
                        chunk_size=args.chunk_size, request_timeout_s=args.request_timeout,
                        lab=lab, username=name if name in creds else "",
                        password=creds.get(name, ""))
        dev.install_initial(offer, artifact)
        devices.append(dev)
    # keepalives (60 s), reconnects and overdue requests need no faster sweep than this
    return Swarm(devices, sweep_s=max(1.0, len(devices) / 1000))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--broker", required=True)
    p.add_argument("--fleet", required=True)
    p.add_argument("--root", required=True, help="root.pub the devices trust")
    p.add_argument("--initial", required=True, help="release dir every device starts with")
    p.add_argument("--devices", default="", help="ID,... (else --prefix/--start/--count)")
    p.add_argument("--prefix", default="dev-")
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--broken", default="", help="devices with a faulty accelerator")
    p.add_argument("--chunk-size", type=int, default=64 * 1024)
    p.add_argument("--request-timeout", type=float, default=2.0)
    p.add_argument("--credentials", default="", help="JSON {device: password}")
    args = p.parse_args(argv)
    stop = False

    def on_signal(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    swarm = build_swarm(args)
    swarm.connect()
    print(json.dumps({"ready": len(swarm.devices)}), flush=True)
    while not stop:
        swarm.run_once(0.05)
    print(json.dumps(swarm.counters()), flush=True)
    for dev in swarm.devices:
        dev.edge.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
