"""The watched folder of offline bundles (``[ota] bundle_dir``): drop a ``.esb`` on the
device (a USB stick mounted there, a file copied in) and the running agent installs it.

The agent looks into the folder every ``CHECK_S`` seconds while no update is under way.
A ``*.esb`` file whose size and modification time did not change since the last look (a
copy still being written is left alone until it is complete) goes through the same path
as ``edgeship agent install``: its offer is the OTA core's ``OfferReceived`` and its
chunks are answered from the bundle's files, so the checks, slots, health check and
rollback are the daemon's own. The file is then moved into ``installed/`` or
``rejected/`` inside the folder, with one log line saying why; a file that cannot be moved
(a read-only stick) is remembered and not tried again while the agent runs. Nothing in
the folder is ever tried twice in a loop.

:class:`BundleDir` is the folder's bookkeeping; :func:`verdict` the pure reading of how an
install ended.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeship.agent import _ota as ota

from edgeship._errors import EdgeshipError

__all__ = ["BUSY_PHASES", "CHECK_S", "BundleDir", "Verdict", "install_dropped", "verdict"]

CHECK_S = 2.0
BUSY_PHASES = ("offered", "downloading", "downloaded", "verifying", "installing",
               "health-checking")
SUFFIX = ".esb"
MAX_NAME = 255


@dataclass(frozen=True)
class Verdict:
    """How a dropped bundle ended: ``installed`` (now active), ``waiting`` (downloaded, to
    install inside the device's maintenance window), ``already`` (that release is active)
    or ``rejected`` (``reason`` says why; the active model is untouched)."""

    outcome: str
    reason: str = ""

    @property
    def folder(self) -> str:
        """The subfolder the bundle file moves to."""
        return "rejected" if self.outcome == "rejected" else "installed"


def verdict(before: ota.OtaState, after: ota.OtaState, version: str) -> Verdict:
    """Read the state the bundle's offer left (``before``: the state it was offered in)."""
    active = after.active.version if after.active else None
    if active == version:
        return Verdict("already") if after == before else Verdict("installed")
    if after.phase == "downloaded" and after.job is not None and after.job.version == version:
        return Verdict("waiting", "downloaded, waiting for the install window")
    reason = after.error or f"the device ended in {after.phase}"
    return Verdict("rejected", f"{reason}; {active or 'no model'} stays active")


class BundleDir:
    """The watched folder: which files are ready, and where each one goes afterwards."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._sizes: dict[str, tuple[int, int]] = {}  # name -> (size, mtime_ns) last look
        self._done: set[tuple[str, int, int]] = set()  # handled but could not be moved

    def ready(self) -> list[Path]:
        """``*.esb`` files unchanged since the last look, by name (hidden files and
        folders are not looked at)."""
        try:
            entries = sorted(os.scandir(self.folder), key=lambda e: e.name)
        except OSError:  # not mounted (yet): nothing to do
            return []
        sizes: dict[str, tuple[int, int]] = {}
        out = []
        for entry in entries:
            if entry.name.startswith(".") or not entry.name.endswith(SUFFIX) \
                    or len(entry.name) > MAX_NAME:
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            mark = (st.st_size, st.st_mtime_ns)
            sizes[entry.name] = mark
            if (entry.name, *mark) in self._done:
                continue
            if self._sizes.get(entry.name) == mark:
                out.append(Path(entry.path))
        self._sizes = sizes
        return out

    def settle(self, path: Path, result: Verdict) -> str:
        """Move ``path`` into the folder its verdict names; where it went ("" when it
        could not be moved: then it is remembered and left alone)."""
        target_dir = self.folder / result.folder
        target = target_dir / path.name
        try:
            st = path.stat()
        except OSError:
            return ""
        try:
            target_dir.mkdir(exist_ok=True)
            n = 1
            while target.exists():  # the same name dropped again: keep both
                target = target_dir / f"{path.stem}.{n}{path.suffix}"
                n += 1
            path.rename(target)
        except OSError:
            self._done.add((path.name, st.st_size, st.st_mtime_ns))
            return ""
        return str(target)


def install_dropped(agent: Any, path: Path, log: Callable[..., None]) -> Verdict:
    """Install the bundle ``path`` on the running ``agent`` (the daemon's
    :class:`~edgeship.agent._daemon.Agent`, in its loop's thread) exactly as ``agent
    install`` does, move it aside and log one line."""
    from edgeship.sdk.release._bundle import read_bundle

    version = None
    try:
        bundle = read_bundle(path, max_file_bytes=agent.config.ota.max_artifact_bytes)
    except EdgeshipError as exc:
        result = Verdict("rejected", str(exc))
    else:
        version, before = bundle.version, agent.state
        agent.local_files = bundle.files  # chunks answered from the bundle
        try:
            agent.dispatch(ota.OfferReceived(bundle.offer))
        finally:
            agent.local_files = None
        result = verdict(before, agent.state, bundle.version)
    moved = agent.bundles.settle(path, result)
    log(f"bundle_{result.outcome}", level="warning" if result.outcome == "rejected" else "info",
        file=path.name, version=version, reason=result.reason[:300], moved_to=moved or None)
    return result
