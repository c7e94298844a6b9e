"""Deltas: exact round trips (hypothesis), tensor awareness on real ONNX files, and hostile
deltas that must fail as MalformedError without allocating past the signed size."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from edgeship.sdk import apply_delta, best_delta, make_delta
from edgeship.sdk.release._delta_parse import find_regions
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from edgeship import MalformedError

FORMATS = ("bsdiff4", "edgeship-tensor")
_SETTINGS = settings(max_examples=40, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])


def _model(tensors: dict[str, np.ndarray]) -> bytes:
    """A small valid ONNX model whose initializers are ``tensors`` (summed into one output)."""
    inits = [numpy_helper.from_array(a, name) for name, a in tensors.items()]
    nodes = [helper.make_node("Cast", [name], [f"{name}_f"], to=TensorProto.FLOAT)
             for name in tensors]
    nodes += [helper.make_node("ReduceSum", [f"{name}_f"], [f"{name}_s"], keepdims=0)
              for name in tensors]
    nodes.append(helper.make_node("Sum", [f"{n}_s" for n in tensors], ["y"]))
    graph = helper.make_graph(nodes, "g", [], [helper.make_tensor_value_info(
        "y", TensorProto.FLOAT, [])], initializer=inits)
    return helper.make_model(graph).SerializeToString()


def _int8_model(seed: int, n: int = 20_000) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "conv.w": rng.integers(-127, 128, (n,), dtype=np.int8),
        "conv.b": rng.integers(-5000, 5000, (64,), dtype=np.int32),
        "conv.scale": rng.random(64).astype(np.float32),
        "head.w": rng.integers(-127, 128, (2560,), dtype=np.int8),
        "misc.i64": rng.integers(-(2**62), 2**62, (16,), dtype=np.int64),
        "misc.f16": rng.random(32).astype(np.float16),
    }


@_SETTINGS
@given(base=st.binary(max_size=3000), new=st.binary(max_size=3000),
       fmt=st.sampled_from(FORMATS))
def test_round_trip_on_arbitrary_bytes(base: bytes, new: bytes, fmt: str) -> None:
    delta = make_delta(base, new, fmt)
    assert apply_delta(base, delta, fmt, max_output=len(new)) == new


@_SETTINGS
@given(seed=st.integers(0, 2**16), moved=st.floats(0.0, 1.0), step=st.integers(1, 127),
       resize_head=st.booleans())
def test_round_trip_on_onnx_models(seed: int, moved: float, step: int,
                                   resize_head: bool) -> None:
    old = _int8_model(seed, n=3000)
    rng = np.random.default_rng(seed + 1)
    new = {k: v.copy() for k, v in old.items()}
    mask = rng.random(3000) < moved
    new["conv.w"][mask] = (new["conv.w"][mask].astype(np.int16) + step).astype(np.int8)
    new["conv.b"][:3] += 1
    new["conv.scale"] *= np.float32(1.01)
    new["misc.i64"][::3] ^= np.int64(-1)  # extreme 64-bit differences
    new["misc.f16"][1::2] *= np.float16(0.5)
    if resize_head:
        new["head.w"] = rng.integers(-127, 128, (1280,), dtype=np.int8)
    old_bytes, new_bytes = _model(old), _model(new)
    for fmt in FORMATS:
        delta = make_delta(old_bytes, new_bytes, fmt)
        assert apply_delta(old_bytes, delta, fmt, max_output=len(new_bytes)) == new_bytes


def test_regions_match_the_onnx_initializers() -> None:
    data = _model(_int8_model(0))
    model = onnx.load_from_string(data)
    raw = {t.name: t.raw_data for t in model.graph.initializer}
    regions = find_regions(data)
    assert {r.name for r in regions} == set(raw)
    widths = {r.name: r.width for r in regions}
    assert widths == {"conv.w": 1, "conv.b": 4, "conv.scale": 4, "head.w": 1, "misc.i64": 8,
                      "misc.f16": 2}
    for r in regions:
        assert data[r.offset : r.offset + r.length] == raw[r.name]


def test_tensor_delta_beats_bsdiff_on_small_int8_moves() -> None:
    old = _int8_model(1, n=200_000)
    new = {k: v.copy() for k, v in old.items()}
    rng = np.random.default_rng(2)
    step = rng.choice([-1, 0, 0, 0, 1], size=200_000).astype(np.int8)
    new["conv.w"] = (old["conv.w"].astype(np.int16) + step).clip(-127, 127).astype(np.int8)
    old_bytes, new_bytes = _model(old), _model(new)
    tensor = make_delta(old_bytes, new_bytes, "edgeship-tensor")
    bsdiff = make_delta(old_bytes, new_bytes, "bsdiff4")
    # the entropy of the int8 differences is the floor any coder of them can reach
    diff = new["conv.w"].astype(np.int16) - old["conv.w"]
    p = np.unique(diff, return_counts=True)[1] / diff.size
    floor = diff.size * float(-(p * np.log2(p)).sum()) / 8
    assert len(tensor) < 1.05 * floor
    assert len(tensor) < 0.9 * len(bsdiff)
    assert best_delta(old_bytes, new_bytes) == ("edgeship-tensor", tensor)


def test_head_only_change_costs_about_the_head() -> None:
    old = _int8_model(3, n=200_000)
    new = dict(old, **{"head.w": np.random.default_rng(4).integers(-127, 128, 2560, np.int8)})
    delta = make_delta(_model(old), _model(new), "edgeship-tensor")
    assert len(delta) < 2560 + 600


@pytest.mark.parametrize("fmt", FORMATS)
def test_delta_declaring_more_than_the_signed_size_is_refused(fmt: str) -> None:
    old = _model(_int8_model(5, n=5000))
    new = _model(_int8_model(6, n=5000))
    delta = make_delta(old, new, fmt)
    with pytest.raises(MalformedError):
        apply_delta(old, delta, fmt, max_output=len(new) - 1)


def test_tensor_delta_for_another_base_is_refused() -> None:
    old = _model(_int8_model(5, n=5000))
    new = _model(_int8_model(6, n=5000))
    delta = make_delta(old, new, "edgeship-tensor")
    with pytest.raises(MalformedError):
        apply_delta(old + b"x", delta, "edgeship-tensor", max_output=len(new))


@_SETTINGS
@given(data=st.data(), fmt=st.sampled_from(FORMATS))
def test_corrupted_deltas_fail_cleanly(data: st.DataObject, fmt: str) -> None:
    old = _model(_int8_model(7, n=2000))
    new_t = _int8_model(7, n=2000)
    new_t["conv.w"][::7] += 1
    new = _model(new_t)
    delta = bytearray(make_delta(old, new, fmt))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(delta) - 1))
        delta[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        delta = delta[: data.draw(st.integers(0, len(delta)))]
    try:
        out = apply_delta(old, bytes(delta), fmt, max_output=len(new))
    except MalformedError:
        return
    assert len(out) <= len(new)  # a wrong result is caught by the sha256 check after


@_SETTINGS
@given(junk=st.binary(max_size=400), fmt=st.sampled_from(FORMATS))
def test_arbitrary_bytes_as_delta_fail_cleanly(junk: bytes, fmt: str) -> None:
    prefix = b"ESTD\x01" if fmt == "edgeship-tensor" else b"BSDIFF40"
    for delta in (junk, prefix + junk):
        try:
            out = apply_delta(b"base" * 100, delta, fmt, max_output=1000)
        except MalformedError:
            continue
        assert len(out) <= 1000


def test_zstd_frame_declaring_more_than_its_limit_is_refused_before_allocation() -> None:
    import zstandard
    from edgeship.sdk.release._delta_codec import decompress

    bomb = zstandard.ZstdCompressor().compress(bytes(64 * 1024 * 1024))  # ~2 kB on the wire
    assert len(bomb) < 4096
    with pytest.raises(ValueError, match="declares"):
        decompress(bomb, 1000)
    assert decompress(zstandard.ZstdCompressor().compress(b"x" * 1000), 1000) == b"x" * 1000


@pytest.mark.parametrize(("spread", "code"), [(40, 1), (2**31, 0)])
def test_wide_differences_pick_varints_or_planes(spread: int, code: int) -> None:
    from edgeship.sdk.release import _delta_codec as codec

    rng = np.random.default_rng(spread)
    diffs = [rng.integers(-spread, spread, n).astype(np.int64).astype(dt).view(udt)
             for n, dt, udt in ((300, np.int32, np.uint32), (40, np.int64, np.uint64),
                                (64, np.int16, np.uint16))]
    chosen, method, blob, raw_size = codec.encode_wide(diffs)
    assert chosen == code
    raw = codec.decompress(blob, raw_size) if method == codec.ZSTD else blob
    back = codec.decode_wide(chosen, raw, [(d.nbytes, d.itemsize) for d in diffs])
    assert all(np.array_equal(a, b) for a, b in zip(back, diffs, strict=True))
