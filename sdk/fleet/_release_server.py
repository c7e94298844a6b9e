"""The host-side release server behind ``edgeship fleet serve``, and a plain offer push.

:class:`ReleaseServer` answers chunk requests (:mod:`edgeship.sdk.transport._transfer`) for the
files of the release directories it was given. It subscribes through
``$share/<group>/edgeship/<fleet>/+/ota/req`` (each device's own request topic), so several
servers split the requests of a fleet between them and any one can die. It serves only
files a manifest names (the artifact, its deltas and per-target variants), and answers a
request only on the chunk topic of the device whose request topic it came in on: the
broker's ACL (:mod:`edgeship.sdk.fleet._acl`) lets only that device publish there, so one
device cannot make the server publish to another's topics. The fleet-wide
``edgeship/<fleet>/ota/req`` of older agents is still answered (a request naming the
device whose chunk topic it asks for); the generated ACL lets no device publish there.
It keeps counters of what it sent (for tests and benchmarks).

:func:`push_offer` publishes a release's offer, retained, on each named device's offer
topic; the staged rollout logic builds on it.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeship.sdk.release._manifest import ArtifactInfo, DeltaInfo
from edgeship.sdk.release._release import Release
from edgeship.sdk.transport._mqtt import Message, MqttEdge, request_topic, requester, topics
from edgeship.sdk.transport._transfer import (
    ChunkRequest,
    decode_request,
    encode_chunk,
    serve_request,
)

from edgeship._errors import InputError, TransportError

__all__ = ["ReleaseServer", "ServedFile", "push_offer"]

ANSWER_CACHE_BYTES = 64 * 1024 * 1024  # chunk answers kept (oldest dropped first)
_OK = encode_chunk(0, 0, 0, b"")[:6]  # magic, version, status OK: a chunk, not a refusal


@dataclass(frozen=True)
class ServedFile:
    path: Path
    size: int


class ReleaseServer:
    """Serves chunks of the files of ``releases`` to the devices of ``fleet`` ("+": all)."""

    def __init__(self, broker_url: str, releases: Iterable[str | Path], *, fleet: str = "+",
                 group: str = "edgeship-release-servers", client_id: str | None = None,
                 username: str = "", password: str = "") -> None:
        self.fleet = fleet
        self.files: dict[tuple[str, str, str], ServedFile] = {}
        self._lock = threading.Lock()
        self._maps: dict[Path, Any] = {}
        self._answers: dict[tuple[str, str, str, int, int], bytes] = {}
        self._answer_bytes = 0
        self.requests = 0
        self.bytes_sent = 0
        self.sent: Counter[tuple[str, str, str, int]] = Counter()  # (device, version, file, index)
        for reldir in releases:
            self.add_release(reldir)
        self.edge = MqttEdge(broker_url, client_id=client_id or f"edgeship-serve-{os.getpid()}",
                             subscriptions=[request_topic(fleet, "+", share_group=group),
                                            request_topic(fleet, share_group=group)],
                             on_message=self._on_request, username=username, password=password)

    def add_release(self, reldir: str | Path) -> Release:
        """Serve this release's artifact, deltas and per-target variants (only those)."""
        release = Release.load(reldir)
        m = release.manifest
        files: list[ArtifactInfo | DeltaInfo] = [m.artifact, *m.deltas, *m.variants.values()]
        for name, size in ((f.name, f.size) for f in files):
            path = release.path / name
            if not path.is_file() or path.stat().st_size != size:
                raise InputError(f"{path}: missing or not the {size} bytes its manifest signs")
            with self._lock:
                self.files[(m.model, m.version, name)] = ServedFile(path=path, size=size)
        return release

    def start(self) -> ReleaseServer:
        """Connect to the broker and start answering chunk requests."""
        self.edge.start()
        return self

    def stop(self) -> None:
        """Stop answering and disconnect."""
        self.edge.stop()

    def _lookup(self, req: ChunkRequest) -> tuple[int, Callable[[int, int], bytes]] | None:
        with self._lock:
            served = self.files.get((req.model, req.version, req.file))
        if served is None:
            return None

        view = self._mapped(served)

        def read(offset: int, length: int) -> bytes:
            return bytes(view[offset:offset + length])

        return served.size, read

    def _mapped(self, served: ServedFile) -> Any:
        """The file mapped read-only, once (thousands of devices ask for the same chunks:
        the page cache serves them without an open and a read each)."""
        with self._lock:
            view = self._maps.get(served.path)
            if view is None:
                with served.path.open("rb") as handle:
                    view = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) \
                        if served.size else b""
                self._maps[served.path] = view
        return view

    def _answer(self, raw: bytes) -> tuple[ChunkRequest | None, bytes]:
        """The answer to one request; a chunk answer (header with its sha256 + bytes) is
        built once and kept: thousands of devices ask for the same chunks of a release."""
        try:
            request = decode_request(raw)
        except TransportError:
            return serve_request(raw, self._lookup)
        key = (request.model, request.version, request.file, request.chunk_size, request.index)
        with self._lock:
            answer = self._answers.get(key)
        if answer is not None:
            return request, answer
        request_, answer = serve_request(raw, self._lookup)
        if answer[:len(_OK)] == _OK:
            with self._lock:
                self._answers[key] = answer
                self._answer_bytes += len(answer)
                while self._answer_bytes > ANSWER_CACHE_BYTES and self._answers:
                    self._answer_bytes -= len(self._answers.pop(next(iter(self._answers))))
        return request_, answer

    def _on_request(self, msg: Message) -> None:
        asked = requester(msg.topic)
        if asked is None:
            return
        fleet, device = asked
        request, answer = self._answer(msg.payload)
        if request is None or device not in (None, request.device):
            return  # a request naming another device than the topic it came on
        if msg.response_topic != topics(fleet, request.device).chunk:
            return  # answer only on the requester's own chunk topic
        try:
            info = self.edge.publish(msg.response_topic, answer, correlation=msg.correlation)
        except TransportError:
            return
        if info is None:
            return
        with self._lock:
            self.requests += 1
            self.bytes_sent += len(answer)
            self.sent[(request.device, request.version, request.file, request.index)] += 1


def push_offer(broker_url: str, fleet: str, reldir: str | Path, devices: Sequence[str], *,
               timeout: float = 10.0, username: str = "", password: str = "") -> Release:
    """Publish ``reldir``'s offer (retained, QoS 1) to each device; wait for the broker."""
    if not devices:
        raise InputError("no devices named (use --devices ID,...)")
    release = Release.load(reldir)
    payload = release.offer().to_bytes()
    edge = MqttEdge(broker_url, client_id=f"edgeship-push-{os.getpid()}", username=username,
                    password=password)
    edge.start()
    try:
        if not edge.wait_connected(timeout):
            raise TransportError(f"cannot reach the broker at {broker_url} in {timeout:g}s")
        infos = [edge.publish(topics(fleet, dev).offer, payload, retain=True) for dev in devices]
        for dev, info in zip(devices, infos, strict=True):
            if info is None:
                raise TransportError(f"lost the broker while pushing to {dev}")
            info.wait_for_publish(timeout)
            if not info.is_published():
                raise TransportError(f"the broker did not acknowledge the offer to {dev}")
    finally:
        edge.stop()
    return release
