"""The OpenVINO IR the openvino-cpu target writes (converter/_openvino_ir.py): its compile
choices reach OpenVINO's CPU plugin (kernels without AMX by the layers'
PrimitivesPriority; snippets off by the IR's runtime_options, passed by the SDK's
runtime), and the target writes the fastest one as OUT/model.int8.openvino-cpu.xml/.bin."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from edgeship.converter import ConvertOptions, convert
from edgeship.converter._openvino_ir import IrChoice, candidates, has_amx, write_ir
from edgeship.sdk import Model

ov = pytest.importorskip("openvino")
FIX = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def int8(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ir")
    for name in ("cnn", "mlp"):
        convert(FIX / f"{name}.onnx", FIX / f"{name}_calib.npz", root / name, ConvertOptions(formats=("onnx",)))
    return {name: root / name / "model.int8.onnx" for name in ("cnn", "mlp")}


def _kernels(model: Model | str | Path) -> list[tuple[str, str]]:
    compiled = model._backend._compiled if isinstance(model, Model) else ov.Core().compile_model(str(model), "CPU")
    infos = [op.get_rt_info() for op in compiled.get_runtime_model().get_ordered_ops()]
    return [(i["layerType"].astype(str), i["primitiveType"].astype(str)) for i in infos]


def test_candidates_are_only_the_choices_that_can_differ() -> None:
    assert candidates(False, False, False) == [IrChoice(fused=False, amx=True)]
    labels = [c.label for c in candidates(True, True, True)]
    assert labels == ["default", "no-amx", "fused", "fused-no-amx", "no-snippets", "no-amx-no-snippets",
                      "fused-no-snippets", "fused-no-amx-no-snippets"]


def test_no_amx_reaches_the_cpu_plugin_and_keeps_the_outputs(int8: dict[str, Path], tmp_path: Path) -> None:
    if not has_amx(ov.Core()):
        pytest.skip("no AMX on this CPU: nothing to turn off")  # counted as a skip, not a pass
    xml = write_ir(int8["cnn"], tmp_path / "m.xml", IrChoice(fused=False, amx=False))
    assert (tmp_path / "m.bin").stat().st_size > 0 and 'PrimitivesPriority="cpu:' in xml.read_text()
    default = [k for k in _kernels(int8["cnn"]) if k[0] == "Convolution"]
    plain = [k for k in _kernels(xml) if k[0] == "Convolution"]
    assert any("amx" in kind for _, kind in default)  # the plugin's own choice here
    assert len(plain) == len(default) and not any("amx" in kind for _, kind in plain)
    x = np.load(FIX / "cnn_eval.npz")["input"][:4]
    a = Model.load(int8["cnn"], runtime="openvino", threads=1)
    b = Model.load(xml, runtime="openvino", threads=1)
    for i in range(len(x)):  # the same int8 arithmetic in other kernels
        np.testing.assert_allclose(a.predict(x[i:i + 1]), b.predict(x[i:i + 1]), atol=1.0 / 256 + 1e-6)


def test_snippets_off_in_the_ir_gives_int8_layers_through_the_sdk(int8: dict[str, Path], tmp_path: Path) -> None:
    """One thread: OpenVINO fuses the whole mlp fixture into one f32 snippets subgraph;
    the IR's runtime_options turn that off when the SDK's runtime compiles it."""
    xml = write_ir(int8["mlp"], tmp_path / "m.xml", IrChoice(fused=False, amx=True, snippets=False))
    assert "SNIPPETS_MODE" in xml.read_text()
    before = Model.load(int8["mlp"], runtime="openvino", threads=1)
    after = Model.load(xml, runtime="openvino", threads=1)
    assert [t for t, _ in _kernels(before) if t in ("Subgraph", "FullyConnected")] == ["Subgraph"]
    assert [t for t, _ in _kernels(after)].count("FullyConnected") == 3
    x = np.load(FIX / "mlp_eval.npz")["input"][:4]
    for i in range(len(x)):
        assert before.predict(x[i:i + 1]).argmax() == after.predict(x[i:i + 1]).argmax()


def _u8_weight_matmul(path: Path) -> Path:
    """x -> Q/DQ (uint8) -> MatMul with a uint8 weight of zero point 128 -> mm: the form
    our converter writes for PP-OCR rec's MatMuls."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array(rng.integers(1, 256, (64, 32)).astype(np.uint8), "w_q"),
             numpy_helper.from_array(np.array(0.01, np.float32), "w_s"), numpy_helper.from_array(np.array(128, np.uint8), "w_z"),
             numpy_helper.from_array(np.array(0.02, np.float32), "x_s"), numpy_helper.from_array(np.array(128, np.uint8), "x_z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_s", "x_z"], ["x_q"]),
             helper.make_node("DequantizeLinear", ["x_q", "x_s", "x_z"], ["x_dq"]),
             helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w_dq"]),
             helper.make_node("MatMul", ["x_dq", "w_dq"], ["mm"], name="mm")]
    graph = helper.make_graph(nodes, "u8w", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("mm", TensorProto.FLOAT, [1, 32])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_uint8_weights_become_int8_with_the_same_numbers(tmp_path: Path) -> None:
    """OpenVINO multiplies a MatMul with uint8 zero-pointed weights in f32 (weights
    decompressed) and the int8 check says so; the OpenVINO form's int8 weights (w - 128,
    zero point 0) give bit-identical outputs and an int8 kernel."""
    import onnx
    import onnxruntime as ort
    from edgeship.converter._openvino_prep import fused_for_openvino
    from edgeship.converter._target_openvino import _compile, _compute_nodes, node_precisions

    generic = _u8_weight_matmul(tmp_path / "g.onnx")
    prepared, count = fused_for_openvino(onnx.load(str(generic)))
    assert count == 1
    assert {i.name: i.data_type for i in prepared.graph.initializer}["w_q_s8"] == onnx.TensorProto.INT8
    assert "w_q" not in {i.name for i in prepared.graph.initializer}  # nothing else read it
    onnx.save(prepared, str(tmp_path / "p.onnx"))
    x = {"x": np.random.default_rng(1).normal(size=(1, 64)).astype(np.float32)}
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    a, b = (ort.InferenceSession(str(p), plain).run(None, x)[0] for p in (generic, tmp_path / "p.onnx"))
    assert np.array_equal(a, b)
    core = ov.Core()
    precision = {}
    for p in (generic, tmp_path / "p.onnx"):
        nodes = _compute_nodes(p)
        rows = node_precisions(_compile(core, p, "CPU").get_runtime_model(), [(n, op) for n, op, _ in nodes],
                               {w: n for n, _, w in nodes})
        precision[p] = rows[0][2]
    assert precision == {generic: "f32", tmp_path / "p.onnx": "i8"}


def test_a_packed_ir_runs_as_its_xml_does_from_file_or_memory(int8: dict[str, Path], tmp_path: Path) -> None:
    """The .ovir a release ships (the IR's .xml and .bin as one file): read in memory, its
    layers' kernel choice and its runtime_options reach the plugin as from the .xml; the
    suffix (or the header) picks OpenVINO without runtime=."""
    from edgeship.sdk.runtime._openvino_pack import pack_ir_files, unpack_ir

    xml = write_ir(int8["mlp"], tmp_path / "m.xml", IrChoice(fused=False, amx=False, snippets=False))
    packed = pack_ir_files(xml, 1 << 30)
    assert unpack_ir(packed) == (xml.read_bytes(), (tmp_path / "m.bin").read_bytes())
    (tmp_path / "m.ovir").write_bytes(packed)
    from_xml = Model.load(xml, threads=1)  # auto: OpenVINO by the suffix
    from_file = Model.load(tmp_path / "m.ovir", threads=1)
    from_memory = Model.load_bytes(packed, format="ovir", runtime="openvino", threads=1)
    assert from_xml.runtime == from_file.runtime == from_memory.runtime == "openvino"
    assert _kernels(from_file) == _kernels(from_xml) == _kernels(from_memory)
    assert [t for t, _ in _kernels(from_memory)].count("FullyConnected") == 3  # snippets off
    x = np.load(FIX / "mlp_eval.npz")["input"][:4]
    for i in range(len(x)):
        want = from_xml.predict(x[i:i + 1])
        assert np.array_equal(from_file.predict(x[i:i + 1]), want)
        assert np.array_equal(from_memory.predict(x[i:i + 1]), want)


def test_a_damaged_or_misrouted_pack_is_one_clear_error(int8: dict[str, Path], tmp_path: Path) -> None:
    from edgeship.sdk.runtime._openvino_pack import pack_ir, pack_ir_files

    from edgeship._errors import InputError, ModelLoadError

    xml = write_ir(int8["mlp"], tmp_path / "m.xml", IrChoice(fused=False, amx=True))
    packed = pack_ir_files(xml, 1 << 30)
    for data, words in [(packed[:20], "truncated"), (pack_ir(b"x" * 64, b""), "no <net>"),
                        (packed[:-64], "OpenVINO cannot load the model")]:
        with pytest.raises(ModelLoadError, match=words) as caught:
            Model.load_bytes(data, format="ovir", runtime="openvino")
        assert "\n" not in str(caught.value)
    with pytest.raises(ModelLoadError, match="runs with runtime 'openvino' only"):
        Model.load_bytes(packed, format="ovir", runtime="onnxruntime")
    (tmp_path / "m.bin").unlink()
    with pytest.raises(InputError, match=r"cannot read the IR's weights \(.bin\) beside it"):
        pack_ir_files(xml, 1 << 30)
