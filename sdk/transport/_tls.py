"""The broker TLS files, checked the way the MQTT client reads them, without importing
paho: an agent refuses a missing or unreadable CA / certificate / key at start, before
it serves, as one line (its MQTT session begins only after the first answer)."""

from __future__ import annotations

from edgeship._errors import ConfigError


def tls_files_error(ca: str, cert: str, key: str, exc: BaseException) -> ConfigError:
    """The one error for TLS files that cannot be used."""
    reason = getattr(exc, "strerror", None) or exc
    return ConfigError(f"broker TLS files (ca {ca or '-'}, cert {cert or '-'}, key "
                       f"{key or '-'}): {reason}")


def check_tls_files(ca: str, cert: str, key: str) -> None:
    """Load the CA bundle and the client certificate and key into a throwaway context;
    ConfigError when one cannot be read or is not what it should be."""
    import ssl

    try:
        context = ssl.create_default_context(cafile=ca or None)
        if cert:
            context.load_cert_chain(cert, key or None)
    except (OSError, ssl.SSLError) as exc:
        raise tls_files_error(ca, cert, key, exc) from exc
