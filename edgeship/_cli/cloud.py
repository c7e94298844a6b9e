"""``edgeship cloud serve``: the reference cloud model (Open Inference Protocol v2)."""

from __future__ import annotations

import signal
import ssl
from pathlib import Path
from types import FrameType

import click

from edgeship import ConfigError


@click.group()
def cloud() -> None:
    """Run the reference cloud model that devices fall back to."""


def _server_tls(cert: Path | None, key: Path | None, client_ca: Path | None) -> ssl.SSLContext | None:
    if cert is None:
        if key or client_ca:
            raise ConfigError("--tls-key and --tls-client-ca need --tls-cert")
        return None
    for option, path in (("--tls-cert", cert), ("--tls-key", key), ("--tls-client-ca", client_ca)):
        if path is not None and not path.is_file():
            raise ConfigError(f"{option} {path}: not a readable file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(str(cert), str(key) if key else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"--tls-cert {cert} / --tls-key {key or '(in the cert file)'}: not a "
                          f"PEM certificate and matching private key ({exc})") from exc
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=str(client_ca))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"--tls-client-ca {client_ca}: not PEM CA certificates ({exc})") \
                from exc
        context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: devices show a certificate
    return context


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@cloud.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--name", default=None, help="Model name in /v2/models/<name> (default: file stem).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--api-key-file", type=click.Path(path_type=Path), default=None,
              help="Require 'Authorization: Bearer <key>' or 'X-API-Key: <key>'.")
@click.option("--max-batch", default=32, show_default=True, type=click.IntRange(1, 4096),
              help="Most rows merged into one session call (dynamic-batch models only).")
@click.option("--batch-window-ms", default=2.0, show_default=True, type=click.FloatRange(0, 1000))
@click.option("--model-version", default="1", show_default=True, help="Version in metadata.")
@click.option("--threads", default=None, type=click.IntRange(1, 256), help="onnxruntime threads.")
@click.option("--tls-cert", type=click.Path(path_type=Path), default=None, help="Serve https.")
@click.option("--tls-key", type=click.Path(path_type=Path), default=None, help="Key of --tls-cert.")
@click.option("--tls-client-ca", type=click.Path(path_type=Path), default=None,
              help="Require client certificates signed by this CA (mutual TLS).")
def serve(
    model: Path, name: str | None, port: int, host: str, api_key_file: Path | None,
    max_batch: int, batch_window_ms: float, model_version: str, threads: int | None,
    tls_cert: Path | None, tls_key: Path | None, tls_client_ca: Path | None,
) -> None:  # fmt: skip
    """Serve MODEL.onnx (fp32, onnxruntime) over Open Inference Protocol v2."""
    from edgeship.sdk.serving._cloudserve import OnnxService, describe
    from edgeship.sdk.serving._fallback_config import read_api_key
    from edgeship.sdk.serving._v2server import SPIN_S
    from edgeship.sdk.serving._v2server import serve as v2_serve

    api_key = read_api_key(api_key_file, where="--api-key-file") if api_key_file else None
    context = _server_tls(tls_cert, tls_key, tls_client_ca)
    service = OnnxService(
        model, name=name, version=model_version, max_batch=max_batch,
        batch_window_ms=batch_window_ms, threads=threads,
    )  # fmt: skip
    server = v2_serve(service, host=host, port=port, api_key=api_key, ssl_context=context,
                      spin_s=SPIN_S)  # a process of its own: a lone worker may busy-poll
    click.echo(f"serving {describe(service)} on {server.url}", err=True)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("stopped", err=True)
    finally:
        server.close()
        service.close()
