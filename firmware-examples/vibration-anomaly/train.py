"""Train the vibration anomaly model on synthetic sensor data and export it to ONNX.

Host-side (numpy + scikit-learn; no torch, no skl2onnx): generates healthy and
bearing-fault windows (see ``vibration.py``), fits a small MLP on their features
(20 -> 16 ReLU -> 2 softmax) and writes the graph by hand with ``onnx.helper``. Also writes the calibration and eval data
that ``edgeship convert`` takes, and the golden input/output ``edgeship release --golden``
takes (the health check a device runs before it commits an update)::

    python train.py --out model/
    edgeship convert model/vibration.onnx --calib model/calib.npz --eval model/eval.npz -o model/int8
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from vibration import N_FEATURES, features, synth_window

INPUT, OUTPUT = "features", "probs"


def dataset(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` windows' features, half healthy (0) and half faulty (1, severity 0.3-1.5)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    xs = [features(synth_window(rng, rng.uniform(0.3, 1.5) if y else 0.0)) for y in labels]
    return np.stack(xs), labels.astype(np.int64)


def fit(x: np.ndarray, y: np.ndarray, seed: int) -> Any:
    """A small MLP; features arrive z-scored already (``vibration.features``)."""
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(hidden_layer_sizes=(16,), alpha=1e-3, max_iter=800, random_state=seed)
    return clf.fit(x, y)


def to_onnx(clf: Any) -> onnx.ModelProto:
    """Gemm -> Relu -> Gemm -> Softmax, batch 1, opset 13."""
    w1, w2 = (w.astype(np.float32) for w in clf.coefs_)
    b1, b2 = (b.astype(np.float32) for b in clf.intercepts_)
    if w2.shape[1] == 1:  # sklearn keeps one logit for two classes: make it [-z, z]/2 pairs
        w2 = np.concatenate([-w2, w2], axis=1) / 2
        b2 = np.concatenate([-b2, b2]) / 2
    inits = [numpy_helper.from_array(a, n) for a, n in
             ((w1, "w1"), (b1, "b1"), (w2.astype(np.float32), "w2"), (b2.astype(np.float32), "b2"))]
    nodes = [
        helper.make_node("Gemm", [INPUT, "w1", "b1"], ["h"], name="dense1"),
        helper.make_node("Relu", ["h"], ["h_relu"], name="relu1"),
        helper.make_node("Gemm", ["h_relu", "w2", "b2"], ["logits"], name="dense2"),
        helper.make_node("Softmax", ["logits"], [OUTPUT], axis=1, name="softmax"),
    ]
    graph = helper.make_graph(
        nodes, "vibration_anomaly",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [1, N_FEATURES])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [1, 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="edgeship-vibration-example")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("model"))
    parser.add_argument("--train", type=int, default=1200, help="training windows")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    x, y = dataset(args.train, args.seed)
    x_eval, y_eval = dataset(400, args.seed + 1)
    clf = fit(x, y, args.seed)
    accuracy = float((clf.predict(x_eval) == y_eval).mean())
    args.out.mkdir(parents=True, exist_ok=True)
    onnx.save(to_onnx(clf), args.out / "vibration.onnx")
    np.savez(args.out / "calib.npz", **{INPUT: x[:200].reshape(-1, N_FEATURES)})
    np.savez(args.out / "eval.npz", **{INPUT: x_eval, "label": y_eval})
    # the release health check: a faulty window with the fp32 answer (the softmax of
    # [-z/2, z/2] is sklearn's sigmoid(z)); `edgeship release` measures the tolerance on
    # the INT8 artifact itself
    golden = x_eval[y_eval == 1][:1]
    np.savez(args.out / "golden.npz", **{INPUT: golden,
                                         "output": clf.predict_proba(golden).astype(np.float32)})
    print(f"trained on {len(x)} windows; held-out accuracy {accuracy:.1%} on {len(x_eval)}")
    print(f"wrote {args.out / 'vibration.onnx'}, calib.npz, eval.npz, golden.npz")


if __name__ == "__main__":
    main()
