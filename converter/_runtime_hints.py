"""The edge hints a device runtime reads instead of parsing the model
(edgeship/sdk/runtime/_quant_hints.py): written into the QDQ model's metadata."""

from __future__ import annotations

import onnx
from edgeship.sdk.runtime._quant_hints import METADATA_KEY, QuantHints


def with_runtime_hints(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its edges' quantization parameters in ``metadata_props`` (replacing
    an earlier entry: the last graph edit decides)."""
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, QuantHints.from_graph(model.graph).to_json()
    return model
