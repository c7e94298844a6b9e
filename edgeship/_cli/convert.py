"""``edgeship convert``: parse options, call :func:`edgeship.converter.convert`, print a
short summary. Every bad input surfaces as one ``error: ...`` line and exit code 2."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from edgeship._cli._options import verbose_option
from edgeship._errors import ConfigError


def _formats(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = tuple(dict.fromkeys(v.strip().lower() for v in value.split(",") if v.strip()))
    if not items:
        raise ConfigError("--format needs at least one of onnx, tflite")
    return items


def _input_shapes(values: tuple[str, ...]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """``NAME=1x3x48x320`` (repeatable) -> ((NAME, (1, 3, 48, 320)), ...)."""
    shapes = []
    for value in values:
        name, sep, dims = value.rpartition("=")
        parts = dims.lower().replace(",", "x").split("x")
        if not sep or not name.strip() or not all(p.strip().isdigit() for p in parts):
            raise ConfigError(
                f"--input-shape {value!r}: expected NAME=DIMS with positive integers, "
                "e.g. x=1x3x48x320"
            )
        shapes.append((name.strip(), tuple(int(p) for p in parts)))
    return tuple(shapes)


@click.command(name="convert")
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--calib",
    "calib",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="CALIB.npz: calibration inputs keyed by the model's input names.",
)
@click.option(
    "-o",
    "--out",
    "out",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Output directory (replaced atomically).",
)
@click.option(
    "--format",
    "fmt",
    default=None,
    metavar="onnx,tflite",
    help="Artifacts to write [default: onnx,tflite when the TFLite writer is built in]. "
    "One that cannot be written is exit 2, naming the op and node (OUT/ still gets the "
    "INT8 ONNX and the report); --format onnx asks for ONNX only.",
)
@click.option(
    "--prune",
    type=float,
    default=0.0,
    show_default=True,
    help="Magnitude-prune Conv/Gemm/MatMul weights to this overall sparsity (global: the "
    "smallest |w| model-wide; depthwise convs exempt), in [0, 1).",
)
@click.option(
    "--reconstruct/--no-reconstruct",
    default=True,
    show_default=True,
    help="With --prune: refit each pruned layer's remaining weights (least squares) to its "
    "fp32 output on the calibration data, so the same sparsity costs less accuracy.",
)
@click.option(
    "--eval",
    "eval_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="EVAL.npz: inputs (+ optional label) for accuracy, agreement, latency; also "
    "writes OUT/profile.json (drift reference for `edgeship release --profile`).",
)
@click.option(
    "--base",
    "base",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="A previous OUT/: reuse its quantization parameters where they still fit.",
)
@click.option(
    "--calibration",
    default="minmax",
    show_default=True,
    type=click.Choice(["minmax", "percentile", "mse", "auto"]),
    help="Activation range method; auto picks one per tensor by the output error it "
    "causes on a few calibration samples (slower).",
)
@click.option(
    "--io",
    default="float",
    show_default=True,
    type=click.Choice(["float", "int8"]),
    help="Model inputs/outputs: float (quantize inside) or int8.",
)
@click.option(
    "--input-shape",
    "input_shape",
    multiple=True,
    metavar="NAME=1x3x224x224",
    help="Fix the dynamic dimensions of input NAME (repeatable); TFLite needs static shapes.",
)
@click.option(
    "--equalize/--no-equalize",
    default=None,
    help="Cross-layer equalization: rescale channels between Conv/Gemm pairs (same float "
    "function) so one large channel no longer sets the int8 scales of its neighbours. "
    "Default: kept only where it raises the INT8 output SQNR on calibration samples; "
    "--equalize: every pair.",
)
@click.option(
    "--bias-correction/--no-bias-correction",
    default=None,
    help="Shift each Conv/Gemm int32 bias by the mean error its rounded weights cause on "
    "the calibration data. Default: on with >= 32 calibration samples where a held-out "
    "half of them shows it raises the output SQNR (see hw-bench/results).",
)
@click.option(
    "--learned-rounding/--no-learned-rounding",
    default=None,
    help="Round each Conv/Gemm/MatMul weight up or down by the layer's output error on the "
    "calibration data (AdaRound-style). Default: on, except with --base (which keeps the "
    "previous int8 values); --no-learned-rounding: round to nearest (faster).",
)
@click.option(
    "--max-drop",
    "max_drop",
    type=float,
    default=None,
    help="Largest accuracy drop in points (on --eval labels; else the --drop-metric against "
    "fp32 on the calibration samples, near-ties by their flip risk; top-1 is checked on half "
    "of them held out from the search) the INT8 model may have: "
    "the most sensitive layers "
    "stay in higher precision until it holds. Exit 3 when it cannot be met (OUT/ holds the "
    "best attempt).",
)
@click.option(
    "--drop-metric",
    "drop_metric",
    type=click.Choice(["auto", "top1", "ctc", "boxes", "sqnr"]),
    default="auto",
    show_default=True,
    help="What --max-drop counts without --eval labels: top-1 disagreement, CTC strings that "
    "differ, fp32 boxes missed (YOLOv8/YOLOX layouts), or output noise (100*10^(-SQNR/10)); "
    "auto chooses from the output's shape.",
)
@click.option(
    "--target",
    "targets",
    multiple=True,
    metavar="NAME",
    help="Also compile for this NPU with its own compiler (repeatable; see --list-targets): "
    "its artifact goes next to the INT8 models, what runs on the NPU into the report. "
    "One not compiled is exit 2 (OUT/ is still written).",
)
@click.option(
    "--list-targets",
    is_flag=True,
    is_eager=True,
    expose_value=False,
    callback=lambda ctx, _param, value: _list_targets(ctx) if value else None,
    help="Print the NPU targets, what each compiles and the extra that brings its compiler.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar, no summary.")
@verbose_option
def convert(
    model: Path,
    calib: Path,
    out: Path,
    fmt: str | None,
    prune: float,
    reconstruct: bool,
    eval_path: Path | None,
    base: Path | None,
    calibration: str,
    io: str,
    input_shape: tuple[str, ...],
    equalize: bool | None,
    bias_correction: bool | None,
    learned_rounding: bool | None,
    max_drop: float | None,
    drop_metric: str,
    targets: tuple[str, ...],
    quiet: bool,
) -> None:
    """Convert a float ONNX MODEL to pruned INT8 (QDQ ONNX and TFLite) with a report."""
    entered = time.monotonic()
    from edgeship._cli import wall_seconds
    from edgeship._cli._phases import PhaseSpinner
    from edgeship.converter import ConvertOptions, FormatsNotWritten, default_formats
    from edgeship.converter import convert as run
    from edgeship.converter._malloc import reuse_freed_memory
    from edgeship.converter._mixed import TargetNotMet
    from edgeship.converter._targets import TargetsNotCompiled

    reuse_freed_memory()  # a converting process: keep freed activation buffers
    options = ConvertOptions(
        formats=_formats(fmt) or default_formats(),
        prune=prune,
        reconstruct=reconstruct,
        calibration=calibration,
        io=io,
        input_shapes=_input_shapes(input_shape),
        equalize=equalize,
        bias_correction=bias_correction,
        learned_rounding=learned_rounding,
        max_drop=max_drop,
        drop_metric=drop_metric,
        targets=tuple(t.strip().lower() for t in targets),
    )
    try:
        with PhaseSpinner(not quiet, evaluating=eval_path is not None) as spinner:
            report = run(model, calib, out, options, eval_path=eval_path, base_dir=base,
                         progress=not quiet, on_phase=spinner)
    except (FormatsNotWritten, TargetsNotCompiled) as exc:  # OUT/ was written: say what it holds, exit 2
        if not quiet:
            _summary(exc.report, out, wall_seconds(entered))
        raise
    except TargetNotMet as exc:  # OUT/ holds the best attempt: say so, then exit 3
        if not quiet:
            _summary(exc.report, out, wall_seconds(entered))
        click.echo(f"error: {exc}", err=True)
        raise click.exceptions.Exit(3) from exc
    if not quiet:
        _summary(report, out, wall_seconds(entered))


def _list_targets(ctx: click.Context) -> None:
    from edgeship.converter._targets import TARGETS, compiler_installed

    for t in TARGETS.values():
        state = "installed" if compiler_installed(t) else "not installed"
        click.echo(f"{t.name:<15} {t.compiles:<7} {t.summary}; {t.install_hint()} ({state})")
    ctx.exit(0)


def _targets_summary(report: Any) -> None:
    """With --target: the report's compatibility table (Edge TPU by rules, each target by
    its compiler), one line per target plus what falls back to the CPU."""
    from edgeship.converter._compat import compat_rows

    if not report.targets:
        return
    click.echo("  compat    target: on the accelerator | MACs on it | speed | artifact")
    results = [report.edgetpu, *report.targets.values()]
    for row, result in zip(compat_rows(report.edgetpu, report.targets), results, strict=True):
        if row["on the accelerator"] == "not compiled":
            click.echo(f"    {row['target']:<14} not compiled: {result['error']}")
            continue
        click.echo(f"    {row['target']:<14} {row['on the accelerator']} | {row['MACs on it']} | "
                   f"{row['speed']} | {result.get('artifact') or '-'}")
        if row["falls back to the CPU"] != "nothing":
            click.echo(f"    {'':<14} CPU: {row['falls back to the CPU']}")


def _summary(report: Any, out: Path, wall_s: float) -> None:
    from edgeship.converter._report import not_written_line, verdict_line

    s = report.sizes
    formats = report.formats or {"written": ["onnx"], "not_written": {}}
    click.echo(f"wrote {out}/  ({', '.join(formats['written'])})")
    for fmt, why in sorted(formats["not_written"].items()):
        click.echo(f"  {not_written_line(fmt, why)}")
    fp32 = f"fp32 {s['fp32_bytes']} B"
    if s.get("fp32_external_files"):
        fp32 += f" (with {s['fp32_external_files']} external data file(s))"
    click.echo(
        f"  size      {fp32} -> int8 onnx {s['int8_onnx_bytes']} B "
        f"({s['int8_onnx_ratio']:.3f}x)"
        + (f", tflite {s['int8_tflite_bytes']} B" if "int8_tflite_bytes" in s else "")
    )
    if report.eval:
        e = report.eval
        acc = ""
        if e.get("fp32_accuracy") is not None:
            acc = f"accuracy fp32 {e['fp32_accuracy']:.2f}% int8 {e['int8_accuracy']:.2f}%, "
        click.echo(
            f"  eval      {acc}agreement {e['agreement']:.2f}%, output SQNR {e['output_sqnr_db']:.1f} dB, "
            f"latency fp32 {e['fp32_latency_ms']:.3f} ms int8 {e['int8_latency_ms']:.3f} ms"
        )
    if report.profile:
        p = report.profile
        click.echo(
            f"  profile   {p['file']}: {len(p['features'])} features of {p['samples']} eval "
            "samples (drift reference: edgeship release --profile)"
        )
    if report.float_ops:
        click.echo(f"  float ops {len(report.float_ops)} (see report.html)")
    if report.base:
        b = report.base
        click.echo(
            f"  --base    kept params of {b['tensors_kept']}/{b['tensors_total']} tensors, "
            f"{b['weights_kept']}/{b['weights_total']} int8 weights unchanged"
        )
    _targets_summary(report)
    # wall-clock from the command's start (start-up, imports, --eval and writing included);
    # the report's phase timings are in report.json
    lr = report.extra.get("learned_rounding")
    lr_part = (f" (learned rounding {lr['seconds']:.1f} s of it: Gram matrices "
               f"{lr['gram_seconds']:.1f} s beside calibration, "
               f"{lr.get('gram_wait_seconds', lr['gram_seconds']):.1f} s waited for, "
               f"rounding {lr['rounding_seconds']:.1f} s)" if lr else "")
    click.echo(f"  time      {wall_s:.2f} s{lr_part}; report: {out}/report.html")
    click.echo(verdict_line(report))
