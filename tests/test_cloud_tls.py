"""Cloud fallback over mutual TLS and with an API key, built from ``[fallback]`` keys the
way agent.toml gives them; a real ``edgeship cloud serve`` subprocess speaking https."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from edgeship.sdk.serving._fallback_config import build_fallback
from test_cloud_serve import start_cloud, stop

from edgeship import ConfigError, TransportError


def _cert(
    name: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *, ca: bool = False,
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = issuer or (subject, key)
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(tmp: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[str, str]:
    cert_path, key_path = tmp / f"{stem}.crt", tmp / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("edgeship test CA", ca_key, None, ca=True)
    out = {"ca": _write(tmp, "ca", ca, ca_key)[0]}
    for who in ("server", "device"):
        key = ec.generate_private_key(ec.SECP256R1())
        out[f"{who}_cert"], out[f"{who}_key"] = _write(tmp, who, _cert(who, key, (ca.subject, ca_key)), key)
    return out


def test_mutual_tls_and_api_key(pki: dict[str, str], tmp_path: Path) -> None:
    api_key = tmp_path / "cloud.key"
    api_key.write_text("tls-and-key\n")
    proc, port = start_cloud(
        FIXTURES / "cnn.onnx",
        "--tls-cert", pki["server_cert"], "--tls-key", pki["server_key"],
        "--tls-client-ca", pki["ca"], "--api-key-file", str(api_key),
    )  # fmt: skip
    x = {"input": np.load(FIXTURES / "cnn_eval.npz")["input"][:1].astype(np.float32)}
    base = {"url": f"https://localhost:{port}", "model": "cnn", "deadline_ms": 3000,
            "policy": ["no_model"], "ca": pki["ca"]}  # fmt: skip
    try:
        good = build_fallback(
            {**base, "cert": pki["device_cert"], "key": pki["device_key"], "api_key_file": str(api_key)}
        )
        answer = good.answer(x)
        assert (answer.source, answer.version) == ("cloud", "1")
        assert answer.outputs["probs"].shape == (1, 10)
        # no client certificate: the TLS handshake fails -> TransportError, no hang
        no_cert = build_fallback({**base, "api_key_file": str(api_key)})
        with pytest.raises(TransportError):
            no_cert.answer(x)
        # right certificate, no API key: 401 -> TransportError too
        no_key = build_fallback({**base, "cert": pki["device_cert"], "key": pki["device_key"]})
        with pytest.raises(TransportError, match="401"):
            no_key.answer(x)
        # a CA that did not sign the server: refused by the device
        wrong_ca = build_fallback({**base, "ca": pki["device_cert"], "cert": pki["device_cert"],
                                   "key": pki["device_key"]})  # fmt: skip
        with pytest.raises(TransportError, match=r"TLS|certificate"):
            wrong_ca.answer(x)
    finally:
        stop(proc)


def test_bad_fallback_settings_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"fallback.url"):
        build_fallback({"url": "ftp://x", "model": "m"})
    with pytest.raises(ConfigError, match=r"fallback.model"):
        build_fallback({"url": "http://x"})
    with pytest.raises(ConfigError, match=r"fallback.api_key_file"):
        build_fallback({"url": "http://x", "model": "m", "api_key_file": str(tmp_path / "none")})
    with pytest.raises(ConfigError, match=r"fallback.key"):
        build_fallback({"url": "https://x", "model": "m", "key": "k.pem"})
    with pytest.raises(ConfigError, match=r"fallback.ca"):
        build_fallback({"url": "https://x", "model": "m", "ca": str(tmp_path / "none.pem")})
    with pytest.raises(ConfigError, match=r"fallback.policy"):
        build_fallback({"url": "http://x", "model": "m", "policy": ["never"]})
    with pytest.raises(ConfigError, match=r"fallback.cooldown_s"):
        build_fallback({"url": "http://x", "model": "m", "cooldown_s": "soon"})
    fm = build_fallback({"url": "http://x", "model": "m", "failures": 5, "confidence": 0.8,
                         "policy": ["low_confidence"]})  # fmt: skip
    assert fm.breaker.failures == 5 and fm.policy.threshold == 0.8 and fm.policy.low_confidence
