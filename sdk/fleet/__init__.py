"""edgeship.sdk.fleet: the fleet manager's engine (host side only).

Staged rollouts and their database, fleet status from the broker, broker credentials and
ACLs, the release server that answers devices' chunk requests, and the fleet dashboard
(a local web app) with the telemetry history it keeps. Imported by the
``edgeship fleet`` commands; nothing that runs on a device imports it.
"""

from __future__ import annotations

from edgeship._lazy import attach

_EXPORTS: dict[str, str] = {
    "Dashboard": "edgeship.sdk.fleet._dashboard",
    "DashboardConfig": "edgeship.sdk.fleet._dashboard",
    "DeviceStatus": "edgeship.sdk.fleet._fleetstatus",
    "FleetDB": "edgeship.sdk.fleet._fleetdb",
    "FleetWatcher": "edgeship.sdk.fleet._fleetstatus",
    "History": "edgeship.sdk.fleet._history",
    "ReleaseServer": "edgeship.sdk.fleet._release_server",
    "Rollout": "edgeship.sdk.fleet._rollout",
    "RolloutPolicy": "edgeship.sdk.fleet._rollout",
    "collect_status": "edgeship.sdk.fleet._fleetstatus",
    "push_offer": "edgeship.sdk.fleet._release_server",
    "run_rollout": "edgeship.sdk.fleet._rollout_run",
    "write_credentials": "edgeship.sdk.fleet._acl",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = attach(__name__, _EXPORTS)
