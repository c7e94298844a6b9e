"""``edgeship cloud serve``: the reference cloud model (Open Inference Protocol v2)."""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType

import click

from edgeship import ConfigError

_MAX_KEY_BYTES = 4096


@click.group()
def cloud() -> None:
    """Run the reference cloud model that devices fall back to."""


def _read_api_key(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        data = path.read_bytes()[: _MAX_KEY_BYTES + 1]
    except OSError as exc:
        raise ConfigError(f"--api-key-file: cannot read {path}: {exc.strerror}") from exc
    key = data.decode(errors="replace").strip()
    if not key or len(data) > _MAX_KEY_BYTES or any(c.isspace() for c in key):
        raise ConfigError(
            f"--api-key-file: {path} must hold one key of at most {_MAX_KEY_BYTES} bytes"
        )
    return key


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@cloud.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--name", default=None, help="Model name in /v2/models/<name> (default: file stem).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--api-key-file",
    type=click.Path(path_type=Path),
    default=None,
    help="Require 'Authorization: Bearer <key>' or 'X-API-Key: <key>'.",
)
@click.option(
    "--max-batch",
    default=32,
    show_default=True,
    type=click.IntRange(1, 4096),
    help="Most rows merged into one session call (dynamic-batch models only).",
)
@click.option("--batch-window-ms", default=2.0, show_default=True, type=click.FloatRange(0, 1000))
@click.option(
    "--model-version", default="1", show_default=True, help="Version reported in metadata."
)
@click.option(
    "--threads", default=None, type=click.IntRange(1, 256), help="onnxruntime intra-op threads."
)
def serve(
    model: Path,
    name: str | None,
    port: int,
    host: str,
    api_key_file: Path | None,
    max_batch: int,
    batch_window_ms: float,
    model_version: str,
    threads: int | None,
) -> None:
    """Serve MODEL.onnx (fp32, onnxruntime) over Open Inference Protocol v2."""
    from edgeship.sdk._cloudserve import OnnxService, describe
    from edgeship.sdk._v2server import serve as v2_serve

    api_key = _read_api_key(api_key_file)
    service = OnnxService(
        model,
        name=name,
        version=model_version,
        max_batch=max_batch,
        batch_window_ms=batch_window_ms,
        threads=threads,
    )
    server = v2_serve(service, host=host, port=port, api_key=api_key)
    click.echo(f"serving {describe(service)} on {server.url}", err=True)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("stopped", err=True)
    finally:
        server.close()
        service.close()
