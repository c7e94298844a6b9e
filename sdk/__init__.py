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
    "AgentAnswer": "edgeship.sdk._client",
    "AgentClient": "edgeship.sdk._client",
    "MqttEdge": "edgeship.sdk._mqtt",
    "ChunkRequest": "edgeship.sdk._transfer",
    "ReleaseServer": "edgeship.sdk._release_server",
    "push_offer": "edgeship.sdk._release_server",
    # staged rollouts, fleet status, broker credentials (fleet-manager engineer)
    "Rollout": "edgeship.sdk._rollout",
    "RolloutPolicy": "edgeship.sdk._rollout",
    "FleetDB": "edgeship.sdk._fleetdb",
    "run_rollout": "edgeship.sdk._rollout_run",
    "DeviceStatus": "edgeship.sdk._fleetstatus",
    "FleetWatcher": "edgeship.sdk._fleetstatus",
    "collect_status": "edgeship.sdk._fleetstatus",
    "write_credentials": "edgeship.sdk._acl",
    # cloud fallback (fallback engineer)
    "Answer": "edgeship.sdk._fallback",
    "CircuitBreaker": "edgeship.sdk._fallback",
    "CloudClient": "edgeship.sdk._cloud",
    "FallbackModel": "edgeship.sdk._fallback",
    "FallbackPolicy": "edgeship.sdk._fallback",
    # releases, keys, deltas, device trust checks (release engineer)
    "ArtifactInfo": "edgeship.sdk._manifest",
    "DeltaInfo": "edgeship.sdk._manifest",
    "Golden": "edgeship.sdk._manifest",
    "Manifest": "edgeship.sdk._manifest",
    "parse_version": "edgeship.sdk._manifest",
    "KeySet": "edgeship.sdk._keys",
    "KeyDir": "edgeship.sdk._keydir",
    "Release": "edgeship.sdk._release",
    "verify_release": "edgeship.sdk._release",
    "write_verified": "edgeship.sdk._release",
    "make_delta": "edgeship.sdk._delta",
    "apply_delta": "edgeship.sdk._delta",
    "best_delta": "edgeship.sdk._delta",
    "MAX_OFFER_SIZE": "edgeship.sdk._trust",
    "Offer": "edgeship.sdk._trust",
    "PayloadVerifier": "edgeship.sdk._trust",
    "TrustedState": "edgeship.sdk._trust",
    "check_offer": "edgeship.sdk._trust",
    "check_payload": "edgeship.sdk._trust",
    "Encryption": "edgeship.sdk._crypt",
    "decrypt": "edgeship.sdk._crypt",
    "unwrap_data_key": "edgeship.sdk._crypt",
    "Model": "edgeship.sdk._model",
    "TensorSpec": "edgeship.sdk._model",
    # reference data profiles and drift accounting (drift engineer)
    "DriftConfig": "edgeship.sdk._drift_monitor",
    "DriftMonitor": "edgeship.sdk._drift_monitor",
    "DriftReport": "edgeship.sdk._drift_monitor",
    "Profile": "edgeship.sdk._profile",
    "build_profile": "edgeship.sdk._profile",
    "profile_from_file": "edgeship.sdk._profile",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = attach(__name__, _EXPORTS)
