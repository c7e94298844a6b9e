"""The tensor-aware delta on TFLite flatbuffers: buffers are found where the tflite reader
says they are, named by their tensors, and small int8 moves give small exact deltas."""

from __future__ import annotations

import flatbuffers
import numpy as np
import tflite
from edgeship.sdk import apply_delta, make_delta
from edgeship.sdk.release._delta_parse import find_regions
from hypothesis import given, settings
from hypothesis import strategies as st

INT8, INT32, FLOAT32 = 9, 2, 0


def _tflite(tensors: list[tuple[str, int, np.ndarray]]) -> bytes:
    """A flatbuffer Model with one subgraph whose tensors own buffers 1..n (0 is empty)."""
    b = flatbuffers.Builder(1024)
    buffers = []
    for data in [b""] + [a.tobytes() for _, _, a in tensors]:
        vec = b.CreateByteVector(data) if data else None
        tflite.BufferStart(b)
        if vec is not None:
            tflite.BufferAddData(b, vec)
        buffers.append(tflite.BufferEnd(b))
    made = []
    for i, (name, ttype, array) in enumerate(tensors, start=1):
        sname = b.CreateString(name)
        tflite.TensorStartShapeVector(b, 1)
        b.PrependInt32(array.size)
        shape = b.EndVector()
        tflite.TensorStart(b)
        tflite.TensorAddShape(b, shape)
        tflite.TensorAddType(b, ttype)
        tflite.TensorAddBuffer(b, i)
        tflite.TensorAddName(b, sname)
        made.append(tflite.TensorEnd(b))
    tflite.SubGraphStartTensorsVector(b, len(made))
    for t in reversed(made):
        b.PrependUOffsetTRelative(t)
    tvec = b.EndVector()
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, tvec)
    subgraph = tflite.SubGraphEnd(b)
    tflite.ModelStartSubgraphsVector(b, 1)
    b.PrependUOffsetTRelative(subgraph)
    subgraphs = b.EndVector()
    tflite.ModelStartBuffersVector(b, len(buffers))
    for buf in reversed(buffers):
        b.PrependUOffsetTRelative(buf)
    bvec = b.EndVector()
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, 3)
    tflite.ModelAddSubgraphs(b, subgraphs)
    tflite.ModelAddBuffers(b, bvec)
    b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def _weights(seed: int) -> list[tuple[str, int, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        ("conv/w", INT8, rng.integers(-127, 128, 60_000, dtype=np.int8)),
        ("conv/b", INT32, rng.integers(-9000, 9000, 64, dtype=np.int32)),
        ("head/w", INT8, rng.integers(-127, 128, 2560, dtype=np.int8)),
        ("head/scale", FLOAT32, rng.random(10).astype(np.float32)),
    ]


def test_regions_are_the_tflite_buffers() -> None:
    data = _tflite(_weights(0))
    model = tflite.Model.GetRootAsModel(data, 0)
    regions = {r.name: r for r in find_regions(data)}
    assert set(regions) == {"conv/w", "conv/b", "head/w", "head/scale"}
    assert [regions[n].width for n in ("conv/w", "conv/b", "head/w", "head/scale")] == [1, 4, 1, 4]
    subgraph = model.Subgraphs(0)
    for i in range(subgraph.TensorsLength()):
        tensor = subgraph.Tensors(i)
        region = regions[tensor.Name().decode()]
        expected = model.Buffers(tensor.Buffer()).DataAsNumpy().tobytes()
        assert data[region.offset : region.offset + region.length] == expected


def test_small_int8_moves_give_a_small_exact_delta() -> None:
    old = _weights(1)
    new = [(n, t, a.copy()) for n, t, a in old]
    rng = np.random.default_rng(2)
    w = new[0][2]
    moved = rng.random(w.size) < 0.1
    w[moved] = np.clip(w[moved].astype(np.int16) + rng.choice([-1, 1], moved.sum()),
                       -127, 127).astype(np.int8)
    new[1][2][:4] += 3
    old_b, new_b = _tflite(old), _tflite(new)
    delta = make_delta(old_b, new_b, "edgeship-tensor")
    assert apply_delta(old_b, delta, "edgeship-tensor", max_output=len(new_b)) == new_b
    # 10% of 60k weights moved by one: H(0.1) + 0.1 sign bits = 0.57 bits per weight
    floor = 60_000 * 0.569 / 8
    assert len(delta) < 1.15 * floor
    assert len(delta) < 0.9 * len(make_delta(old_b, new_b, "bsdiff4"))


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_region_finder_survives_corrupt_flatbuffers(data: st.DataObject) -> None:
    blob = bytearray(_tflite(_weights(5)[:2]))
    for _ in range(data.draw(st.integers(1, 8))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    regions = find_regions(bytes(blob))
    end = 0
    for r in regions:  # whatever it finds is in bounds and disjoint
        assert r.offset >= end and r.offset + r.length <= len(blob)
        end = r.offset + r.length
