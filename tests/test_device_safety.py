"""edgetune.device.onnx_safety and device.datasets: hostile models and datasets are refused."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import List

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgetune.device.datasets import check_dataset_file, load_dataset, match_to_model
from edgetune.device.errors import InvalidArgument, ResourceExhausted
from edgetune.device.onnx_safety import check_model_file, inspect_model, location_problem

ROOT = Path(__file__).resolve().parent.parent
MAX = 1 << 30


def external(tensor: TensorProto, location: str) -> TensorProto:
    """Mark ``tensor`` as stored in an external file at ``location`` (no data inline)."""
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def weight(name: str = "w") -> TensorProto:
    return helper.make_tensor(name, TensorProto.FLOAT, [4], np.ones(4, np.float32).tobytes(),
                              raw=True)


def make_model(nodes: List[onnx.NodeProto], initializers: List[TensorProto] = (),
               **kwargs) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    graph = helper.make_graph(nodes, "g", [x], [y], list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8,
                             **kwargs)


def save(model: onnx.ModelProto, folder: Path, name: str = "model.onnx") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(model.SerializeToString())
    return path


def add_model(init: List[TensorProto]) -> onnx.ModelProto:
    return make_model([helper.make_node("Add", ["x", "w"], ["y"])], init)


# ------------------------------------------------------------------ models

def test_normal_model_passes_with_summary(tmp_path: Path) -> None:
    summary = check_model_file(save(add_model([weight()]), tmp_path), MAX)
    assert summary.ir_version == 8 and summary.opsets == (("", 13),)
    assert [(i.name, i.dtype, i.shape) for i in summary.inputs] == [("x", "float32", ("batch", 4))]
    assert [o.name for o in summary.outputs] == ["y"]
    assert summary.nodes == 1 and not summary.has_external_data


@pytest.mark.parametrize("data", [b"", b"\x00" * 64, b"hello, I am a text file\n" * 20,
                                  b"PK\x03\x04" + bytes(range(256))])
def test_not_onnx_bytes_are_refused(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(data)
    with pytest.raises(InvalidArgument, match="not an ONNX model"):
        check_model_file(path, MAX)


def test_size_limit(tmp_path: Path) -> None:
    path = save(add_model([weight()]), tmp_path)
    with pytest.raises(ResourceExhausted, match="max_model_bytes"):
        check_model_file(path, 10)


@pytest.mark.parametrize("location", ["../../etc/passwd", "/etc/passwd", "sub/../../x.bin",
                                      "C:\\Windows\\x.bin", "\\\\server\\share\\x.bin",
                                      "weights.bin\x00.txt", "..\\..\\x.bin", ""])
def test_escaping_initializer_locations_are_refused(tmp_path: Path, location: str) -> None:
    model = add_model([external(weight(), location)])
    with pytest.raises(InvalidArgument, match="points outside the model's bundle") as info:
        check_model_file(save(model, tmp_path), MAX)
    assert repr(location) in str(info.value)


def test_escape_in_constant_node_attribute(tmp_path: Path) -> None:
    const = helper.make_node("Constant", [], ["w"], name="c",
                             value=external(weight(), "../../etc/passwd"))
    model = make_model([const, helper.make_node("Add", ["x", "w"], ["y"])])
    with pytest.raises(InvalidArgument, match="'../../etc/passwd'.*node 'c' attribute 'value'"):
        check_model_file(save(model, tmp_path), MAX)


def _if_model(branch_tensor: TensorProto) -> onnx.ModelProto:
    out = helper.make_tensor_value_info("w", TensorProto.FLOAT, [4])
    then_g = helper.make_graph([helper.make_node("Constant", [], ["w"], value=branch_tensor)],
                               "then", [], [out])
    else_g = helper.make_graph([helper.make_node("Constant", [], ["w"], value=weight())],
                               "else", [], [out])
    cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
    return make_model([helper.make_node("If", ["cond"], ["w"], name="if", then_branch=then_g,
                                        else_branch=else_g),
                       helper.make_node("Add", ["x", "w"], ["y"])], [cond])


def test_escape_in_if_subgraph(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="node 'if' subgraph 'then_branch'"):
        check_model_file(save(_if_model(external(weight(), "/etc/shadow")), tmp_path), MAX)
    # the same model with an inline tensor is fine, and runs in onnxruntime
    ok = save(_if_model(weight()), tmp_path, "ok.onnx")
    assert check_model_file(ok, MAX).nodes == 4
    import onnxruntime as ort
    out = ort.InferenceSession(str(ok)).run(None, {"x": np.zeros((1, 4), np.float32)})
    assert out[0].tolist() == [[1.0] * 4]


def test_escape_in_function_and_sparse_initializer(tmp_path: Path) -> None:
    fn_const = helper.make_node("Constant", [], ["k"], value=external(weight(), "../f.bin"))
    fn = helper.make_function("local", "F", ["a"], ["b"],
                              [fn_const, helper.make_node("Add", ["a", "k"], ["b"])],
                              [helper.make_opsetid("", 13)])
    model = make_model([helper.make_node("F", ["x"], ["y"], domain="local")],
                       functions=[fn])
    with pytest.raises(InvalidArgument, match="function 'F'"):
        check_model_file(save(model, tmp_path / "a"), MAX)
    values = external(weight("sv"), "/abs/values.bin")
    indices = helper.make_tensor("si", TensorProto.INT64, [4], [0, 1, 2, 3])
    model = add_model([weight()])
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [4]))
    with pytest.raises(InvalidArgument, match="sparse initializer"):
        check_model_file(save(model, tmp_path / "b"), MAX)


def test_symlink_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "link.bin").symlink_to(tmp_path / "secret.bin")
    assert location_problem("link.bin", bundle) == "resolves outside the model's folder"
    assert location_problem("weights/w.bin", bundle) is None
    with pytest.raises(InvalidArgument, match="resolves outside"):
        check_model_file(save(add_model([external(weight(), "link.bin")]), bundle), MAX)


def test_external_data_inside_the_folder_is_refused_as_not_single_file(tmp_path: Path) -> None:
    model = add_model([helper.make_tensor("w", TensorProto.FLOAT, [4096],
                                          np.ones(4096, np.float32).tobytes(), raw=True)])
    path = tmp_path / "ext.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.bin", size_threshold=0)
    summary = inspect_model(path, MAX)
    assert summary.has_external_data and summary.external[0].location == "ext.bin"
    with pytest.raises(InvalidArgument, match=r"single-file models only.*save_as_external_data=False"):
        check_model_file(path, MAX)


def test_skim_keeps_every_declared_field_and_drops_payloads(tmp_path: Path) -> None:
    from edgetune.device.onnx_safety import skim
    from edgetune.protos import onnx_subset_pb2 as sub
    big = helper.make_tensor("w", TensorProto.FLOAT, [100_000],
                             np.ones(100_000, np.float32).tobytes(), raw=True)
    model = _if_model(weight())
    model.graph.initializer.append(big)
    data = model.SerializeToString()
    skimmed = skim(data, sub.ModelProto.DESCRIPTOR)
    assert len(skimmed) < 2000 < 400_000 < len(data)
    full = sub.ModelProto.FromString(data)
    full.DiscardUnknownFields()
    assert sub.ModelProto.FromString(skimmed) == full
    path = save(model, tmp_path)
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(data[:len(data) // 2])
    with pytest.raises(InvalidArgument, match="not an ONNX model: .*past the end"):
        check_model_file(truncated, MAX)
    assert check_model_file(path, MAX).nodes == 4


def test_deeply_nested_subgraphs_are_refused(tmp_path: Path) -> None:
    out = helper.make_tensor_value_info("w", TensorProto.FLOAT, [4])
    graph = helper.make_graph([helper.make_node("Constant", [], ["w"], value=weight())], "g0",
                              [], [out])
    leaf = graph
    for i in range(1, 25):  # each level adds NodeProto > AttributeProto > GraphProto
        node = helper.make_node("If", ["cond"], ["w"], then_branch=graph, else_branch=leaf)
        graph = helper.make_graph([node], f"g{i}", [], [out])
    model = make_model([helper.make_node("If", ["cond"], ["w"], then_branch=graph,
                                         else_branch=leaf),
                        helper.make_node("Add", ["x", "w"], ["y"])],
                       [helper.make_tensor("cond", TensorProto.BOOL, [], [True])])
    with pytest.raises(InvalidArgument, match="nested more than 64 deep"):
        check_model_file(save(model, tmp_path), MAX)


def test_subset_proto_and_onnx_share_a_process() -> None:
    """Both import orders: no descriptor clash, and both parse the same model."""
    code = """
import sys
first, second = sys.argv[1:]
import importlib
importlib.import_module(first); importlib.import_module(second)
import onnx
from onnx import helper, TensorProto
from edgetune.protos import onnx_subset_pb2 as sub
m = helper.make_model(helper.make_graph([], 'g', [], [helper.make_tensor_value_info('x', TensorProto.FLOAT, [1])]))
parsed = sub.ModelProto.FromString(m.SerializeToString())
assert parsed.graph.output[0].name == 'x' and parsed.ir_version == m.ir_version
assert sub.ModelProto.DESCRIPTOR.full_name == 'edgetune.onnxsubset.ModelProto'
assert onnx.ModelProto.DESCRIPTOR.full_name == 'onnx.ModelProto'
print('ok')
"""
    for order in (("onnx", "edgetune.protos.onnx_subset_pb2"), ("edgetune.protos.onnx_subset_pb2", "onnx")):
        done = subprocess.run([sys.executable, "-c", code, *order], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_device_core_imports_without_host_packages_and_parses_as_python39() -> None:
    modules = ["errors", "limits", "store", "upload", "onnx_safety", "datasets", "runner", "evaluate", "metrics",
               "sysinfo"]
    for name in modules:
        source = (ROOT / "device" / f"{name}.py").read_text()
        ast.parse(source, feature_version=(3, 9))
        assert "from __future__ import annotations" in source
    code = ("import sys\n"
            "for blocked in ('onnx', 'paramiko', 'rich', 'PIL', 'host'):\n"
            "    sys.modules[blocked] = None\n"
            + "".join(f"import edgetune.device.{m}\n" for m in modules) + "print('ok')")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


# ------------------------------------------------------------------ datasets

class Arg:
    """Stands in for onnxruntime's NodeArg (name, shape, type) in matching tests."""

    def __init__(self, name: str, shape: list, type: str = "tensor(float)") -> None:
        self.name, self.shape, self.type = name, shape, type


def test_pickled_object_arrays_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.npz"
    np.savez(path, x=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(InvalidArgument, match="array 'x' holds pickled Python objects"):
        check_dataset_file(path)
    with pytest.raises(InvalidArgument, match="array 'x' holds pickled Python objects"):
        load_dataset(path)


@pytest.mark.parametrize("arrays, match", [
    ({"x": np.zeros((3, 2)), "labels": np.zeros(4, np.int64)}, "disagree on the number of samples"),
    ({"x": np.array(5.0)}, "is a scalar"),
    ({"x": np.array(["a", "b"])}, "not a plain number"),
    ({}, "holds no arrays"),
])
def test_bad_datasets_are_refused_at_upload(tmp_path: Path, arrays: dict, match: str) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    with pytest.raises(InvalidArgument, match=match):
        check_dataset_file(path)


def test_dataset_limits_and_non_npz(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez_compressed(path, x=np.zeros((1000, 1000), np.float32))  # tiny file, 4 MB unpacked
    assert path.stat().st_size < 100_000
    with pytest.raises(InvalidArgument, match=r"take 4000\d{3} bytes unpacked"):
        check_dataset_file(path, max_bytes=1_000_000)
    with pytest.raises(InvalidArgument, match="1000 samples.*max_dataset_samples"):
        check_dataset_file(path, max_samples=999)
    summary = check_dataset_file(path)
    assert summary.samples == 1000 and summary.arrays[0].shape == (1000, 1000)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(InvalidArgument, match="not an .npz"):
        check_dataset_file(junk)
    with pytest.raises(InvalidArgument, match="not an .npz"):
        load_dataset(junk)


def test_match_to_model_names_the_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((5, 3, 8, 8), np.float32), labels=np.arange(5))
    ds = load_dataset(path)
    assert ds.samples == 5 and ds.labels is not None
    with pytest.raises(InvalidArgument, match=r"dataset has arrays \[x\] but the model's inputs "
                                              r"are \[input\]; name each array after a model input"):
        match_to_model(ds, [Arg("input", ["N", 3, 8, 8])], [Arg("out", ["N", 10])])
    with pytest.raises(InvalidArgument, match=r"is float32 but the model's input 'x' takes uint8"):
        match_to_model(ds, [Arg("x", ["N", 3, 8, 8], "tensor(uint8)")], [Arg("out", ["N", 10])])
    with pytest.raises(InvalidArgument, match=r"shape \[5, 3, 8, 8\] but the model's input 'x' is "
                                              r"\[N, 3, 16, 16\], so the array must be \[N, 3, 16, 16\]"):
        match_to_model(ds, [Arg("x", ["N", 3, 16, 16])], [Arg("out", ["N", 10])])
    matched = match_to_model(ds, [Arg("x", [1, 3, 8, 8])], [Arg("out", [1, 10])])
    assert matched.fixed_batch == 1 and matched.labels is not None and not matched.references
    np.savez(path, x=np.zeros((5, 2), np.float32), extra=np.zeros(5))
    with pytest.raises(InvalidArgument, match=r"arrays \[extra\] match no model input"):
        match_to_model(load_dataset(path), [Arg("x", ["N", 2])], [Arg("out", ["N", 2])])
    np.savez(path, x=np.zeros((5, 2), np.float32), labels=np.zeros(5, np.float32))
    with pytest.raises(InvalidArgument, match="labels must be integer"):
        match_to_model(load_dataset(path), [Arg("x", ["N", 2])], [Arg("out", ["N", 2])])
