"""The MQTT edge on a real broker: driven by an external loop (no paho thread), request/
response properties, reconnect with backoff after the broker comes back."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from conftest import Mosquitto
from edgeship.sdk.transport._mqtt import Message, MqttEdge


def _drive(edges: list[MqttEdge], until: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "timed out"
        for edge in edges:
            edge.poll(0.01)


def test_external_loop_request_response_and_reconnect(mosquitto: Mosquitto) -> None:
    got: list[Message] = []
    server_in: list[Message] = []
    client = MqttEdge(mosquitto.url, client_id="c", subscriptions=["x/reply"],
                      on_message=got.append, min_backoff=0.1, max_backoff=0.5)
    server = MqttEdge(mosquitto.url, client_id="s", subscriptions=["x/req"],
                      on_message=server_in.append, min_backoff=0.1, max_backoff=0.5)
    edges = [client, server]
    _drive(edges, lambda: client.connected and server.connected)
    assert client.publish("x/req", b"ping", response_topic="x/reply", correlation=b"42")
    _drive(edges, lambda: bool(server_in))
    req = server_in[0]
    assert req.response_topic == "x/reply" and req.correlation == b"42"
    server.publish(req.response_topic, b"pong", correlation=req.correlation)
    _drive(edges, lambda: bool(got))
    assert got[0].payload == b"pong" and got[0].correlation == b"42"

    mosquitto.stop()
    _drive(edges, lambda: not client.connected and not server.connected)
    assert client.publish("x/req", b"lost") is None  # offline: the caller decides
    mosquitto.start()
    _drive(edges, lambda: client.connected and server.connected, timeout=60)
    assert client.connects == 2 and server.connects == 2  # re-subscribed by itself
    client.publish("x/req", b"again", response_topic="x/reply")
    _drive(edges, lambda: len(server_in) == 2)
    assert server_in[1].payload == b"again"


def _cert(name: str, key: Any, issuer: Any, issuer_key: Any, *, ca: bool = False) -> Any:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer or subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def test_mqtts_with_ca_client_certificate_and_password(tmp_path: Any) -> None:
    # mosquitto reads certificates and passwords after dropping root for its own user:
    # they go where that user can read them (pytest's tmp dir is private)
    import os
    import subprocess
    import tempfile

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    shared = Path(tempfile.mkdtemp(prefix="edgeship-tls-"))
    os.chmod(shared, 0o755)

    def write(name: str, key: Any, cert: Any) -> tuple[str, str]:
        kp, cp = shared / f"{name}.key", shared / f"{name}.pem"
        kp.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
        cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        os.chmod(kp, 0o644)
        return str(kp), str(cp)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _cert("edgeship test CA", ca_key, None, None, ca=True)
    _, ca_pem = write("ca", ca_key, ca_cert)
    keys = {n: ec.generate_private_key(ec.SECP256R1()) for n in ("server", "dev")}
    srv_key, srv_pem = write("server", keys["server"], _cert("127.0.0.1", keys["server"],
                                                              ca_cert.subject, ca_key))
    dev_key, dev_pem = write("dev", keys["dev"], _cert("dev-1", keys["dev"], ca_cert.subject,
                                                       ca_key))
    passwd = shared / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "dev-1", "s3cret"], check=True)
    os.chmod(passwd, 0o644)
    broker = Mosquitto(tmp_path, extra_config=(
        f"cafile {ca_pem}\ncertfile {srv_pem}\nkeyfile {srv_key}\nrequire_certificate true\n"
        f"password_file {passwd}\n"))
    broker.start()
    url = f"mqtts://127.0.0.1:{broker.port}"
    try:
        good = MqttEdge(url, client_id="dev-1", username="dev-1", password="s3cret", ca=ca_pem,
                        cert=dev_pem, key=dev_key)
        good.start()
        assert good.wait_connected(30)
        good.stop()
        no_cert = MqttEdge(url, client_id="dev-x", username="dev-1", password="s3cret", ca=ca_pem)
        no_cert.start()
        wrong_pw = MqttEdge(url, client_id="dev-y", username="dev-1", password="nope", ca=ca_pem,
                            cert=dev_pem, key=dev_key)
        wrong_pw.start()
        assert not no_cert.wait_connected(2) and not wrong_pw.wait_connected(0.5)
        no_cert.stop()
        wrong_pw.stop()
    finally:
        broker.stop()
        import shutil

        shutil.rmtree(shared, ignore_errors=True)
