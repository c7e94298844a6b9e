"""edgeship.sdk: what device applications and host tools import.

``Model`` runs an INT8 model (ONNX via onnxruntime, TFLite via LiteRT / tflite-runtime)
with (de)quantization inside; ``AgentClient`` asks a running agent the same question over
its local API; releases, keys, deltas and MQTT transfer are the pieces the agent and the
fleet manager share. Names are imported lazily so that ``import edgeship.sdk`` stays
cheap on a small device: a runtime is imported only when a model is loaded.
"""

from __future__ import annotations

from edgeship._lazy import attach

# public name -> private module that defines it
_EXPORTS: dict[str, str] = {
    # local agent client, MQTT edge, chunk transfer, release server (agent engineer)
    "AgentAnswer": "edgeship.sdk.serving._client",
    "AgentClient": "edgeship.sdk.serving._client",
    "MqttEdge": "edgeship.sdk.transport._mqtt",
    "ChunkRequest": "edgeship.sdk.transport._transfer",
    "ReleaseServer": "edgeship.sdk.fleet._release_server",
    "push_offer": "edgeship.sdk.fleet._release_server",
    # staged rollouts, fleet status, broker credentials (fleet-manager engineer)
    "Rollout": "edgeship.sdk.fleet._rollout",
    "RolloutPolicy": "edgeship.sdk.fleet._rollout",
    "FleetDB": "edgeship.sdk.fleet._fleetdb",
    "run_rollout": "edgeship.sdk.fleet._rollout_run",
    "DeviceStatus": "edgeship.sdk.fleet._fleetstatus",
    "FleetWatcher": "edgeship.sdk.fleet._fleetstatus",
    "collect_status": "edgeship.sdk.fleet._fleetstatus",
    "write_credentials": "edgeship.sdk.fleet._acl",
    "Dashboard": "edgeship.sdk.fleet._dashboard",
    "DashboardConfig": "edgeship.sdk.fleet._dashboard",
    "History": "edgeship.sdk.fleet._history",
    # cloud fallback (fallback engineer)
    "Answer": "edgeship.sdk.serving._fallback",
    "CircuitBreaker": "edgeship.sdk.serving._fallback",
    "CloudClient": "edgeship.sdk.serving._cloud",
    "FallbackModel": "edgeship.sdk.serving._fallback",
    "FallbackPolicy": "edgeship.sdk.serving._fallback",
    # releases, keys, deltas, device trust checks (release engineer)
    "ArtifactInfo": "edgeship.sdk.release._manifest",
    "DeltaInfo": "edgeship.sdk.release._manifest",
    "Golden": "edgeship.sdk.release._manifest",
    "Manifest": "edgeship.sdk.release._manifest",
    "parse_version": "edgeship.sdk.release._manifest",
    "KeySet": "edgeship.sdk.release._keys",
    "KeyDir": "edgeship.sdk.release._keydir",
    "Release": "edgeship.sdk.release._release",
    "verify_release": "edgeship.sdk.release._release",
    "write_verified": "edgeship.sdk.release._release",
    "Bundle": "edgeship.sdk.release._bundle",
    "read_bundle": "edgeship.sdk.release._bundle",
    "write_bundle": "edgeship.sdk.release._bundle",
    "make_delta": "edgeship.sdk.release._delta",
    "apply_delta": "edgeship.sdk.release._delta",
    "best_delta": "edgeship.sdk.release._delta",
    "MAX_OFFER_SIZE": "edgeship.sdk.release._trust",
    "Offer": "edgeship.sdk.release._trust",
    "PayloadVerifier": "edgeship.sdk.release._trust",
    "TrustedState": "edgeship.sdk.release._trust",
    "check_offer": "edgeship.sdk.release._trust",
    "check_payload": "edgeship.sdk.release._trust",
    "Encryption": "edgeship.sdk.release._crypt",
    "decrypt": "edgeship.sdk.release._crypt",
    "unwrap_data_key": "edgeship.sdk.release._crypt",
    "Model": "edgeship.sdk.runtime._model",
    "TensorSpec": "edgeship.sdk.runtime._model",
    # reference data profiles and drift accounting (drift engineer)
    "DriftConfig": "edgeship.sdk.monitor._drift_monitor",
    "DriftMonitor": "edgeship.sdk.monitor._drift_monitor",
    "DriftReport": "edgeship.sdk.monitor._drift_monitor",
    "Profile": "edgeship.sdk.monitor._profile",
    "build_profile": "edgeship.sdk.monitor._profile",
    "profile_from_file": "edgeship.sdk.monitor._profile",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = attach(__name__, _EXPORTS)
