"""``edgeship learn``: federated fine-tuning of a released model's head, ending in a release.

A thin shell: the rounds run on Flower (``edgeship.sdk.learning``), the result goes through
the same ``convert --base`` and ``release --base`` as any update, and the command stops
before pushing: the fleet manager reads the per-round accuracy and decides.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from edgeship._errors import InputError

if TYPE_CHECKING:
    from edgeship.sdk.learning._federation import LearningResult

_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.group()
def learn() -> None:
    """Learn from the fleet without collecting its data (extra: edgeship[federated])."""


@learn.command("serve")
@click.option("--release", "reldir", type=_DIR, required=True,
              help="the release the devices run: the base of the new release's delta")
@click.option("--model", "fp32", type=_FILE, required=True,
              help="the float ONNX model that release was converted from")
@click.option("--converted", type=_DIR, required=True,
              help="that conversion's OUT/ (convert --base keeps its parameters)")
@click.option("--calib", type=_FILE, required=True, help="CALIB.npz for the new conversion")
@click.option("--heldout", type=_FILE, required=True,
              help="HELDOUT.npz with 'label': the server's own set, scored every round")
@click.option("--superlink", required=True, help="the Flower SuperLink, HOST:PORT")
@click.option("--root-certificates", type=_FILE, default=None,
              help="CA of the SuperLink's TLS certificate (default: insecure, for loopback)")
@click.option("--rounds", type=click.IntRange(1, 1000), default=5, show_default=True)
@click.option("--strategy", type=click.Choice(["fedavg", "fedprox"]), default="fedavg",
              show_default=True)
@click.option("--proximal-mu", type=float, default=0.1, show_default=True,
              help="FedProx's pull towards the global head")
@click.option("--min-devices", type=click.IntRange(2), default=2, show_default=True)
@click.option("--local-epochs", type=click.IntRange(1, 1000), default=5, show_default=True)
@click.option("--learning-rate", type=float, default=0.05, show_default=True)
@click.option("--secure-aggregation/--no-secure-aggregation", default=True, show_default=True,
              help="SecAgg+: the server sees only the sum of the devices' updates")
@click.option("--noise-multiplier", type=float, default=0.0, show_default=True,
              help="differential privacy: Gaussian noise over clipped updates (0: off)")
@click.option("--clipping", type=click.Choice(["adaptive", "fixed"]), default="adaptive",
              show_default=True, help="differential privacy: the clipping norm follows the "
              "median of the devices' update norms (adaptive), or stays --clipping-norm")
@click.option("--clipping-norm", type=float, default=1.0, show_default=True,
              help="the clipping norm (adaptive: where it starts)")
@click.option("--keys", "keydir", type=_DIR, required=True)
@click.option("--version", required=True, help="semver of the new release")
@click.option("-o", "--out", "workdir", type=click.Path(path_type=Path), required=True,
              help="work dir: rounds, the fine-tuned model, converted/, release/")
@click.option("--timeout", type=float, default=3600.0, show_default=True,
              help="seconds to wait for the rounds")
def serve(reldir: Path, fp32: Path, converted: Path, calib: Path, heldout: Path,
          superlink: str, root_certificates: Path | None, rounds: int, strategy: str,
          proximal_mu: float, min_devices: int, local_epochs: int, learning_rate: float,
          secure_aggregation: bool, noise_multiplier: float, clipping: str,
          clipping_norm: float, keydir: Path, version: str, workdir: Path, timeout: float) -> None:
    """Run federated rounds on the devices that opted in, then convert and release the
    result as a head-only delta from --release. Does not push."""
    from edgeship.sdk.learning._federation import prepare_run, read_result, submit_run
    from edgeship.sdk.learning._plan import LearningPlan
    from edgeship.sdk.release._release import Release

    plan = LearningPlan(rounds=rounds, strategy=strategy, proximal_mu=proximal_mu,
                        local_epochs=local_epochs, learning_rate=learning_rate,
                        min_devices=min_devices, secure_aggregation=secure_aggregation,
                        noise_multiplier=noise_multiplier, clipping=clipping,
                        clipping_norm=clipping_norm)
    base = Release.load(reldir)
    suffix = Path(base.manifest.artifact.name).suffix
    device_model = converted / "model.int8.onnx"
    prepare_run(workdir, plan, fp32, device_model, heldout)
    click.echo(f"learning run: {rounds} rounds of {strategy} on {superlink} "
               f"(min {min_devices} devices{', SecAgg+' if secure_aggregation else ''})")
    submit_run(workdir, superlink, timeout_s=timeout, root_certificates=root_certificates)
    result = read_result(workdir)
    (workdir / "learn-report.json").write_text(result.to_json())
    for r in result.rounds:
        click.echo(f"  round {r.round}: held-out accuracy {r.accuracy:.2f}%")
    if result.epsilon is not None:
        click.echo(f"  differential privacy: epsilon {result.epsilon:.2f} at delta {plan.delta:g}")
    new = _convert_and_release(fp32, workdir, calib, converted, result, base.manifest.model,
                               suffix, keydir, version, reldir)
    click.echo(f"release {version} in {new}: review learn-report.json, then "
               f"`edgeship fleet push {new} ...` (or as a shadow first)")


def _convert_and_release(fp32: Path, workdir: Path, calib: Path, converted: Path,
                         result: LearningResult, model_name: str, suffix: str, keydir: Path,
                         version: str, reldir: Path) -> Path:
    from edgeship.converter import ConvertOptions, convert
    from edgeship.sdk.learning._federation import write_finetuned
    from edgeship.sdk.release._release import Release

    tuned = write_finetuned(fp32, result, workdir / "model.finetuned.onnx")
    formats = ("onnx",) if suffix == ".onnx" else ("onnx", "tflite")
    out = workdir / "converted"
    convert(tuned, calib, out, ConvertOptions(formats=formats), base_dir=converted)
    artifact = out / ("model.int8.onnx" if suffix == ".onnx" else "model.int8.tflite")
    if not artifact.exists():
        raise InputError(f"the new conversion wrote no {artifact.name}")
    rel = Release.build(artifact, version=version, keydir=keydir, out=workdir / "release",
                        bases=[reldir], model_name=model_name, force=True)
    sizes = ", ".join(f"delta from {d.base_version} {d.size} B" for d in rel.manifest.deltas)
    click.echo(f"  artifact {rel.manifest.artifact.size} B; {sizes or 'no delta'}")
    return workdir / "release"
