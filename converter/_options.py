"""Options of one conversion: a frozen, validated, documented dataclass (no string bags)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from edgeship._errors import ConfigError

CALIBRATION_METHODS = ("minmax", "percentile", "mse", "auto")  # auto: per tensor
FORMATS = ("onnx", "tflite")
IO_TYPES = ("float", "int8")


@dataclass(frozen=True, kw_only=True)
class ConvertOptions:
    """How to convert. Defaults are the measured best (see converter/_calibrate.py).

    Limits (``max_*``) bound everything read from outside: a model or data file larger
    than its limit is refused before it is parsed.
    """

    formats: tuple[str, ...] = ("onnx",)
    calibration: str = "minmax"
    percentile: float = 99.999  # for calibration="percentile"; two-sided, per tensor
    prune: float = 0.0  # overall sparsity of Conv/Gemm/MatMul weights (global, see _prune)
    # --prune: refit each pruned layer's remaining weights to its fp32 output on the
    # calibration data (converter/_reconstruct.py); off: magnitude pruning only
    reconstruct: bool = True
    io: str = "float"  # model inputs/outputs: float (Q/DQ inside) or int8
    # accuracy steps (converter/_equalize.py, converter/_bias_correct.py); defaults measured,
    # see hw-bench/bench_accuracy.py
    # cross-layer equalization before calibration; None (default): kept only where it does
    # not lower the output SQNR on calibration samples (converter/_steps.py);
    # True / False: every pair / never
    equalize: bool | None = None
    # int32 biases absorb the mean shift of rounded weights; None (default): on only with
    # enough calibration samples and where a held-out check shows it helps
    # (converter/_steps.py); True / False: always / never
    bias_correction: bool | None = None
    # up/down rounding of each weight by its layer's output error (converter/_adaround.py);
    # None (default) and True: on (not with --base, which keeps the previous int8 values);
    # False: round to nearest. Measured (256 eval samples, top-1 agreement with fp32):
    # efficientnet_lite0 89.1 -> 92.2 %, ppocr_cls 95.7 -> 96.5 % (64 calibration samples;
    # hw-bench/bench_realworld.py --accuracy --eval 256 shows it against ORT and NNCF)
    learned_rounding: bool | None = None
    # --max-drop: points of accuracy (or agreement) the INT8 model may lose; the most
    # sensitive layers stay float until it holds (converter/_mixed.py); None: off
    max_drop: float | None = None
    # what --max-drop measures without --eval labels (converter/_proxy.py): auto (from the
    # output's shape), top1, ctc, boxes or sqnr
    drop_metric: str = "auto"
    strict_formats: bool = True  # a format not written: raise FormatsNotWritten (OUT/ written)
    max_calib_samples: int = 512  # more samples are ignored (first ones kept)
    max_eval_samples: int = 10_000
    # samples of the report's output SQNR (per-layer SQNR: at most 8 of them, _convert.py)
    sqnr_samples: int = 32
    latency_runs: int = 50
    max_model_bytes: int = 1 << 30  # 1 GiB
    max_data_bytes: int = 1 << 31  # 2 GiB, uncompressed, per npz file
    base_scale_tolerance: float = 0.05  # --base: reuse a scale if the new one is within 5%
    base_weight_tolerance: float = 1.0  # --base: keep old int8 value if within this many steps
    base_noise_budget: float = 1.0  # --base: extra rounding error allowed, x round-to-nearest's
    # --input-shape NAME=1x3x48x320: pins the dynamic dims of that input before shape
    # inference and folding (TFLite needs static shapes; calibration data must match)
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    # --target NAME: NPU compilers run on the written models (converter/_targets.py)
    targets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0.0 <= self.prune < 1.0:
            raise ConfigError(f"--prune must be in [0, 1), got {self.prune}")
        if self.calibration not in CALIBRATION_METHODS:
            raise ConfigError(
                f"unknown calibration {self.calibration!r}; use one of "
                + ", ".join(CALIBRATION_METHODS)
            )
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise ConfigError(f"unknown format {','.join(bad) or '(none)'}; use onnx and/or tflite")
        if self.io not in IO_TYPES:
            raise ConfigError(f"--io must be float or int8, got {self.io!r}")
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"percentile must be in (50, 100], got {self.percentile}")
        if self.max_calib_samples < 1 or self.sqnr_samples < 1 or self.latency_runs < 1:
            raise ConfigError("sample and run counts must be positive")
        if min(self.base_scale_tolerance, self.base_weight_tolerance, self.base_noise_budget) < 0:
            raise ConfigError("--base tolerances must be >= 0")
        if self.max_drop is not None and not 0.0 <= self.max_drop <= 100.0:
            raise ConfigError(f"--max-drop must be in [0, 100] points, got {self.max_drop}")
        from ._proxy import METRICS

        if self.drop_metric not in METRICS:
            raise ConfigError(
                f"--drop-metric must be one of {', '.join(METRICS)}, got {self.drop_metric!r}"
            )
        _check_input_shapes(self.input_shapes)
        from ._targets import check_names

        check_names(self.targets, self.formats)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["formats"] = list(self.formats)
        d["targets"] = list(self.targets)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConvertOptions:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for key in ("formats", "targets"):
            if key in known:
                known[key] = tuple(known[key])
        if "input_shapes" in known:  # JSON lists back to the typed tuples
            known["input_shapes"] = tuple(
                (str(name), tuple(int(d) for d in dims)) for name, dims in known["input_shapes"]
            )
        return cls(**known)


def _check_input_shapes(shapes: tuple[tuple[str, tuple[int, ...]], ...]) -> None:
    seen = set()
    for name, dims in shapes:
        text = "x".join(map(str, dims))
        if not name:
            raise ConfigError(f"--input-shape ={text}: the input name is empty (use NAME=1x3x224x224)")
        if name in seen:
            raise ConfigError(f"--input-shape {name}: given twice")
        seen.add(name)
        if not dims:
            raise ConfigError(f"--input-shape {name}=: no dimensions (use {name}=1x3x224x224)")
        if any(not isinstance(d, int) or isinstance(d, bool) or d <= 0 for d in dims):
            raise ConfigError(f"--input-shape {name}={text}: every dimension must be a positive integer")
