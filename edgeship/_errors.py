"""The one exception tree of edgeship.

Every error edgeship raises on purpose is an :class:`EdgeshipError`; errors of the
libraries below (onnx, onnxruntime, LiteRT, paho-mqtt, cryptography, sockets) are
translated at the boundary with ``raise ... from exc``. The message is written for the
person who has to act on it: what was wrong, and with what.

Split by who is at fault::

    EdgeshipError
    ├── ConfigError                 a config file or option is wrong (names the key)
    ├── InputError                  a file or array handed in by the user is unusable
    │   └── CalibrationError        calibration / eval data does not fit the model
    ├── ConversionError             the model cannot be converted
    │   └── UnsupportedOpError      an op (named, with its node) cannot be expressed
    ├── ModelLoadError              a model file cannot be loaded by a runtime
    ├── InferenceError              a runtime failed, or an input had the wrong shape/dtype
    ├── VerificationError           a release must not be trusted
    │   ├── SignatureError          missing, malformed or wrong signature; unknown key
    │   ├── KeyRevokedError         signed by a key the key set no longer lists
    │   ├── RollbackError           version not newer than the one installed
    │   ├── ExpiredError            manifest or key set past its expiry
    │   ├── DigestMismatchError     payload bytes do not match the signed sha256
    │   ├── LengthMismatchError     payload larger / smaller than the signed size
    │   ├── MalformedError          manifest, key set or offer cannot be parsed
    │   ├── MismatchError           release for another model, base, or hardware
    │   └── DecryptionError         an encrypted release this key cannot open (wrong key,
    │                               tampered ciphertext)
    ├── UpdateError                 an update could not be installed
    │   └── HealthCheckError        the new model failed its golden check
    └── TransportError              broker, HTTP or cloud endpoint unreachable or misbehaving
"""

from __future__ import annotations

__all__ = [
    "CalibrationError",
    "ConfigError",
    "ConversionError",
    "DecryptionError",
    "DigestMismatchError",
    "EdgeshipError",
    "ExpiredError",
    "HealthCheckError",
    "InferenceError",
    "InputError",
    "KeyRevokedError",
    "LengthMismatchError",
    "MalformedError",
    "MismatchError",
    "ModelLoadError",
    "RollbackError",
    "SignatureError",
    "TransportError",
    "UnsupportedOpError",
    "UpdateError",
    "VerificationError",
]


class EdgeshipError(Exception):
    """Root of every error edgeship raises on purpose."""


class ConfigError(EdgeshipError):
    """A configuration file or option is invalid; the message names the key."""


class InputError(EdgeshipError):
    """A file or array given by the user cannot be used."""


class CalibrationError(InputError):
    """Calibration or evaluation data does not match the model's inputs."""


class ConversionError(EdgeshipError):
    """The model cannot be converted."""


class UnsupportedOpError(ConversionError):
    """An operator cannot be expressed by the target format."""

    def __init__(self, op_type: str, node_name: str, reason: str = "") -> None:
        self.op_type = op_type
        self.node_name = node_name
        self.reason = reason
        detail = f": {reason}" if reason else ""
        super().__init__(f"unsupported op {op_type} at node {node_name!r}{detail}")


class ModelLoadError(EdgeshipError):
    """A model file cannot be loaded by the selected runtime."""


class InferenceError(EdgeshipError):
    """Inference failed, or its input does not fit the model."""


class VerificationError(EdgeshipError):
    """A release, manifest or key set must not be trusted."""


class SignatureError(VerificationError):
    """A signature is missing, malformed, or does not verify with a trusted key."""


class KeyRevokedError(VerificationError):
    """The signing key is not (or no longer) in the trusted key set."""


class RollbackError(VerificationError):
    """The offered version is not newer than the one already trusted."""


class ExpiredError(VerificationError):
    """A manifest or key set has passed its expiry time."""


class DigestMismatchError(VerificationError):
    """Payload bytes do not match the sha256 bound in the manifest."""


class LengthMismatchError(VerificationError):
    """Payload length differs from (or exceeds) the signed size."""


class MalformedError(VerificationError):
    """A manifest, key set or offer is not valid JSON or lacks / mistypes a field."""


class MismatchError(VerificationError):
    """The release is for another model, base version, or hardware target."""


class DecryptionError(VerificationError):
    """An encrypted artifact cannot be opened with this key: not a recipient, wrong key,
    or ciphertext that fails its authentication tag."""


class UpdateError(EdgeshipError):
    """An update could not be downloaded, applied or installed."""


class HealthCheckError(UpdateError):
    """The newly installed model failed its golden health check."""


class TransportError(EdgeshipError):
    """A broker, HTTP peer or cloud endpoint is unreachable or misbehaves."""
