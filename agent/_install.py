"""``edgeship agent install FILE.esb``: an offline bundle through the agent's own OTA path.

The bundle's offer goes to the OTA core exactly as one from the broker would
(``OfferReceived``: ``check_offer``, the version floor, model and hardware, encryption),
and the core's chunk requests are answered from the bundle's files in the release
server's own encoding (:func:`edgeship.sdk.transport._transfer.serve_request`), so the
download, ``check_payload``, the slot write, the health check, the switch and a rollback
are the daemon's own code (:class:`edgeship.agent._daemon.Agent`), not a copy.

The daemon must not run meanwhile (both would write the same state and slots): the
install holds the data dir's lock that ``agent run`` takes too. The statuses the install
reports wait in the agent's outbox and reach the fleet at the daemon's next start; its
log lines go to ``<data_dir>/install.log``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeship.agent import _ota as ota
from edgeship.agent._store import LOCK_NAME, data_dir_lock

from edgeship._errors import EdgeshipError, UpdateError

__all__ = ["LOCK_NAME", "InstallResult", "answer_locally", "data_dir_lock", "install_bundle",
           "install_initial"]

@dataclass(frozen=True)
class InstallResult:
    """How an install ended: ``phase`` committed (installed), or already active."""

    version: str
    phase: str
    active: str | None
    slot: str | None
    already: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "phase": self.phase, "active": self.active,
                "slot": self.slot, "already": self.already}


@contextlib.contextmanager
def _logs_to(path: Path) -> Iterator[None]:
    """The agent's JSON log lines go to ``path`` (appended), not over the command's answer."""
    import sys

    with path.open("a", encoding="utf-8") as handle:
        saved, sys.stderr = sys.stderr, handle
        try:
            yield
        finally:
            sys.stderr = saved


def answer_locally(files: dict[str, bytes], action: ota.RequestChunk) -> ota.Event:
    """The chunk a release server would send for ``action``, from the bundle's files."""
    from edgeship.sdk.transport._transfer import encode_request, serve_request

    def lookup(req: Any) -> Any:
        data = files.get(req.file)
        if data is None:
            return None
        return len(data), lambda offset, length: data[offset:offset + length]

    _, answer = serve_request(encode_request(action.request), lookup)
    return ota.Chunk(answer, correlation=action.correlation or ota.correlation(action.request))


def install_initial(agent: Any, log: Callable[..., None]) -> None:
    """``[model] initial`` on a device that never installed a release (no active slot, no
    rollback floor): the release read from disk goes through the OTA core as an offer
    with its artifact would (:class:`~edgeship.agent._daemon.Agent`'s own path)."""
    initial = agent.config.model.initial
    if not initial or agent.state.active is not None or agent.state.trusted.version:
        return
    from edgeship.sdk.release._release import Release

    try:
        release = Release.load(initial)
        _, variant = agent.core.select(release.manifest)  # this device's file of it
        event = ota.LocalRelease(offer=release.offer().to_bytes(),
                                 artifact=release.read_variant(variant) if variant
                                 else release.read_artifact())
    except EdgeshipError as exc:
        log("initial_release_unusable", level="error", path=initial, error=str(exc))
        return
    log("installing_initial", path=initial, version=release.manifest.version)
    agent.dispatch(event)
    if agent.state.active is None:  # refused (expired, wrong key...): say why it serves nothing
        reason = agent.state.error or "refused"
        # the reason first: a client that reads the log line may ask at once
        agent.service.no_model_reason = (f"no model: the initial release "
                                         f"{release.manifest.version} was refused ({reason});"
                                         " waiting for an update")
        log("initial_release_rejected", level="error", path=initial,
            version=release.manifest.version, error=reason)


def install_bundle(config: Any, path: str | Path) -> InstallResult:
    """Install the bundle at ``path`` on the device ``config`` describes; a refused or
    rolled-back install is an :class:`UpdateError` saying why."""
    from edgeship.agent._daemon import Agent, log
    from edgeship.sdk.release._bundle import read_bundle

    bundle = read_bundle(path, max_file_bytes=config.ota.max_artifact_bytes)
    data_dir = Path(config.data_dir)
    with data_dir_lock(data_dir), _logs_to(data_dir / "install.log"):
        agent = Agent(config)
        try:
            install_initial(agent, log)  # a device that never ran: its factory model first
            agent.dispatch(ota.Resume(download_size=agent.store.download_size()))
            before = agent.state
            agent.local_files = bundle.files
            agent.dispatch(ota.OfferReceived(bundle.offer))
            state = agent.state
        finally:
            agent.taps.close()
            agent.outbox.close()
    active = state.active.version if state.active else None
    slot = state.active.slot if state.active else None
    if state == before and active == bundle.version:
        return InstallResult(bundle.version, state.phase, active, slot, already=True)
    if state.phase != "committed" or active != bundle.version:
        reason = state.error or f"the device ended in {state.phase}"
        raise UpdateError(f"bundle {Path(path).name} ({bundle.model} {bundle.version}) not "
                          f"installed: {reason}; {active or 'no model'} stays active")
    return InstallResult(bundle.version, state.phase, active, slot)
