"""edgeship: take a trained model to a fleet of small devices and keep it up to date there.

The import package has three parts, each with its public API in its ``__init__``:
``edgeship.converter`` (host), ``edgeship.sdk`` (devices and hosts) and
``edgeship.agent`` (the device daemon). This top level holds only the error tree,
so importing it costs nothing on a device.
"""

from edgeship._errors import (
    CalibrationError,
    ConfigError,
    ConversionError,
    DecryptionError,
    DigestMismatchError,
    EdgeshipError,
    ExpiredError,
    HealthCheckError,
    InferenceError,
    InputError,
    KeyRevokedError,
    LengthMismatchError,
    MalformedError,
    MismatchError,
    ModelLoadError,
    RollbackError,
    SignatureError,
    TransportError,
    UnsupportedOpError,
    UpdateError,
    VerificationError,
)

__version__ = "0.1.0"

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
    "__version__",
]
