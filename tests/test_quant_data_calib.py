"""Calibration sources -> feeds: every source kind, selection, several inputs, laziness."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from edgetune.host import builders
from edgetune.host.errors import BadInputError, NotFoundError, UsageError
from edgetune.host.quant.calibdata import (CalibrationData, load_calibration, load_npz_feeds,
                                  read_model_inputs)
from edgetune.host.quant.settings import CalibSource, Preprocess, QuantizeSettings

SAMPLES = Path(__file__).resolve().parent.parent / "host" / "samples"


def relu_model(path: Path, shape: Sequence, elem=TensorProto.FLOAT) -> Path:
    x = helper.make_tensor_value_info("input", elem, list(shape))
    y = helper.make_tensor_value_info("out", elem, None)
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["out"], name="relu")],
                              "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                ir_version=10), path)
    return path


def settings_for(model: Path, *sources: CalibSource, **kw) -> QuantizeSettings:
    return QuantizeSettings(model=model, output=model.with_name("out.onnx"),
                            calib=tuple(sources), **kw)


def load(model: Path, *sources: CalibSource, **kw) -> CalibrationData:
    settings = settings_for(model, *sources, **kw)
    return load_calibration(model, settings)


def all_samples(data: CalibrationData, name: str = "input", size: int = 1000) -> np.ndarray:
    return np.concatenate([c[name] for c in data.chunks(size)])


def save_png(path: Path, value: int, size=(4, 4), mode="RGB") -> Path:
    channels = {"RGB": 3, "L": 1}[mode]
    array = np.full(size + ((channels,) if channels > 1 else ()), value, np.uint8)
    Image.fromarray(array, mode).save(path)
    return path


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return relu_model(tmp_path / "m.onnx", ["N", 3, 4, 4])


# --- images ---------------------------------------------------------------------------------

def test_image_folder_sorted_case_insensitive_and_hidden_skipped(tmp_path, model):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    save_png(folder / "b.PNG", 20)
    save_png(folder / "a.png", 10)
    Image.fromarray(np.full((4, 4, 3), 30, np.uint8)).save(folder / "sub" / "c.JPG", quality=100)
    Image.fromarray(np.full((4, 4, 3), 40, np.uint8)).save(folder / "d.bmp")
    save_png(folder / ".hidden.png", 99)
    (folder / "notes.txt").write_text("not an image")
    data = load(model, CalibSource(folder))
    assert len(data) == 4 and data.input_names == ("input",)
    values = all_samples(data)
    assert values.shape == (4, 3, 4, 4) and values.dtype == np.float32
    # sorted by path: a.png, b.PNG, d.bmp, sub/c.JPG
    assert np.allclose(values[:, 0, 0, 0], [10, 20, 40, 30], atol=1)


def test_empty_folder_says_found_0_items(tmp_path, model):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    with pytest.raises(BadInputError) as exc:
        load(model, CalibSource(tmp_path / "empty"))
    assert f"found 0 items in {tmp_path / 'empty'}" in exc.value.message
    assert ".jpg" in exc.value.message and ".npy" in exc.value.message


def test_missing_source_is_not_found(tmp_path, model):
    with pytest.raises(NotFoundError):
        load(model, CalibSource(tmp_path / "nope"))


def test_list_file_relative_to_its_folder(tmp_path, model, monkeypatch):
    data_dir = tmp_path / "data" / "imgs"
    data_dir.mkdir(parents=True)
    save_png(data_dir / "x.png", 50)
    save_png(data_dir / "y.png", 60)
    listing = tmp_path / "data" / "list.txt"
    listing.write_text("# calibration images\n\nimgs/y.png\n  imgs/x.png  \n")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)                 # not relative to the working directory
    data = load(model, CalibSource(listing))
    assert np.allclose(all_samples(data)[:, 0, 0, 0], [60, 50])


def test_list_file_missing_entry_names_file_and_line(tmp_path, model):
    save_png(tmp_path / "a.png", 1)
    listing = tmp_path / "list.txt"
    listing.write_text("a.png\n# comment\nmissing.png\n")
    with pytest.raises(NotFoundError) as exc:
        load(model, CalibSource(listing))
    assert "line 3" in exc.value.message and "missing.png" in exc.value.message


def test_empty_list_file(tmp_path, model):
    listing = tmp_path / "list.txt"
    listing.write_text("# nothing\n\n")
    with pytest.raises(BadInputError, match="finds 0 items"):
        load(model, CalibSource(listing))


def test_images_are_loaded_lazily_per_chunk(tmp_path, model):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(4):
        save_png(folder / f"{i}.png", i)
    data = load(model, CalibSource(folder))
    (folder / "3.png").unlink()               # only the second chunk needs it
    chunks = data.chunks(2)
    first = next(chunks)
    assert first["input"].shape == (2, 3, 4, 4)
    with pytest.raises(NotFoundError):
        next(chunks)


# --- arrays ---------------------------------------------------------------------------------

def test_npy_batch_is_memory_mapped_and_sliced(tmp_path, model):
    array = np.arange(5 * 48, dtype=np.float64).reshape(5, 3, 4, 4)
    np.save(tmp_path / "a.npy", array)
    data = load(model, CalibSource(tmp_path / "a.npy"))
    feed = data._feeds["input"]
    assert isinstance(feed.array, np.memmap)
    out = all_samples(data, size=2)
    assert out.dtype == np.float32 and np.array_equal(out, array.astype(np.float32))


def test_npy_single_sample_without_batch(tmp_path, model):
    np.save(tmp_path / "one.npy", np.ones((3, 4, 4), np.float32))
    data = load(model, CalibSource(tmp_path / "one.npy"))
    assert len(data) == 1 and all_samples(data).shape == (1, 3, 4, 4)


def test_npy_wrong_shape_names_expected(tmp_path, model):
    np.save(tmp_path / "bad.npy", np.ones((2, 4, 4, 3), np.float32))
    with pytest.raises(BadInputError) as exc:
        load(model, CalibSource(tmp_path / "bad.npy"))
    assert "(2, 4, 4, 3)" in exc.value.message and "(N, 3, 4, 4)" in exc.value.message


def test_folder_of_npy_files_one_or_many_samples_each(tmp_path, model):
    folder = tmp_path / "arrays"
    folder.mkdir()
    np.save(folder / "a.npy", np.full((3, 4, 4), 1, np.float32))
    np.save(folder / "b.npy", np.stack([np.full((3, 4, 4), v, np.float32) for v in (2, 3)]))
    data = load(model, CalibSource(folder))
    assert len(data) == 3
    assert list(all_samples(data)[:, 0, 0, 0]) == [1, 2, 3]


def test_npz_by_input_name_or_only_array(tmp_path, model):
    np.savez(tmp_path / "named.npz", input=np.ones((2, 3, 4, 4)), labels=np.arange(2))
    np.savez(tmp_path / "only.npz", whatever=np.zeros((3, 3, 4, 4)))
    assert len(load(model, CalibSource(tmp_path / "named.npz"))) == 2
    assert len(load(model, CalibSource(tmp_path / "only.npz"))) == 3
    np.savez(tmp_path / "two.npz", a=np.ones((2, 3, 4, 4)), b=np.ones((2, 3, 4, 4)))
    with pytest.raises(BadInputError, match="no array for input 'input'"):
        load(model, CalibSource(tmp_path / "two.npz"))


def test_raw_float32_files(tmp_path, model):
    folder = tmp_path / "raw"
    folder.mkdir()
    for i in range(3):
        np.full((3, 4, 4), i, np.float32).tofile(folder / f"{i}.raw")
    data = load(model, CalibSource(folder))
    assert list(all_samples(data)[:, 1, 2, 3]) == [0, 1, 2]


def test_raw_file_wrong_size_gives_expected_size(tmp_path, model):
    np.zeros(10, np.float32).tofile(tmp_path / "x.bin")
    with pytest.raises(BadInputError) as exc:
        load(model, CalibSource(tmp_path / "x.bin"))
    assert "40 bytes" in exc.value.message and "192 bytes" in exc.value.message


def test_raw_needs_shape_for_symbolic_dims(tmp_path):
    model = relu_model(tmp_path / "dyn.onnx", ["N", 3, "h", "w"])
    np.zeros(3 * 2 * 2, np.float32).tofile(tmp_path / "x.raw")
    with pytest.raises(BadInputError, match="symbolic"):
        load(model, CalibSource(tmp_path / "x.raw"))
    data = load(model, CalibSource(tmp_path / "x.raw", shape=(1, 3, 2, 2)))
    assert all_samples(data).shape == (1, 3, 2, 2)


def test_not_onnx_model_is_bad_input(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00not a model at all\xff" * 10)
    with pytest.raises(BadInputError, match="is not an ONNX model"):
        read_model_inputs(bad)


# --- selection -------------------------------------------------------------------------------

def test_count_and_seed_choose_deterministically(tmp_path, model):
    np.save(tmp_path / "a.npy", np.arange(50, dtype=np.float32)[:, None, None, None]
            * np.ones((1, 3, 4, 4), np.float32))
    source = CalibSource(tmp_path / "a.npy")
    first = load(model, source, calib_count=10, seed=3)
    again = load(model, source, calib_count=10, seed=3)
    other = load(model, source, calib_count=10, seed=4)
    picked = all_samples(first)[:, 0, 0, 0]
    assert len(first) == 10 and np.array_equal(picked, all_samples(again)[:, 0, 0, 0])
    assert not np.array_equal(first.indices, other.indices)
    assert len(set(picked.tolist())) == 10 and list(picked) == sorted(picked)
    fewer = load(model, source, calib_count=80)
    assert len(fewer) == 50 and any("all 50 samples" in n for n in fewer.notes)


def test_calib_count_must_be_positive(tmp_path, model):
    np.save(tmp_path / "a.npy", np.ones((2, 3, 4, 4), np.float32))
    with pytest.raises(UsageError):
        load(model, CalibSource(tmp_path / "a.npy"), calib_count=0)


# --- several inputs --------------------------------------------------------------------------

@pytest.fixture
def two_inputs(tmp_path) -> Path:
    return builders.save(builders.two_input_model(), tmp_path / "two.onnx")


def test_two_inputs_by_name(tmp_path, two_inputs):
    np.save(tmp_path / "a.npy", np.ones((6, 4), np.float32))
    np.save(tmp_path / "b.npy", np.full((6, 4), 2, np.float32))
    data = load(two_inputs, CalibSource(tmp_path / "b.npy", "b"),
                CalibSource(tmp_path / "a.npy", "a"))
    chunk = next(data.chunks(10))
    assert data.input_names == ("a", "b")
    assert chunk["a"].mean() == 1 and chunk["b"].mean() == 2


def test_two_inputs_errors(tmp_path, two_inputs):
    np.save(tmp_path / "a.npy", np.ones((6, 4), np.float32))
    with pytest.raises(UsageError, match="no calibration data for input"):
        load(two_inputs, CalibSource(tmp_path / "a.npy", "a"))
    with pytest.raises(BadInputError) as exc:
        load(two_inputs, CalibSource(tmp_path / "a.npy", "a"), CalibSource(tmp_path / "a.npy", "c"))
    assert "'c'" in exc.value.message and "a, b" in exc.value.message
    with pytest.raises(UsageError, match="2 inputs"):
        load(two_inputs, CalibSource(tmp_path / "a.npy"))


def test_two_inputs_counts_truncated_with_warning(tmp_path, two_inputs, caplog):
    np.save(tmp_path / "a.npy", np.ones((6, 4), np.float32))
    np.save(tmp_path / "b.npy", np.ones((4, 4), np.float32))
    data = load(two_inputs, CalibSource(tmp_path / "a.npy", "a"),
                CalibSource(tmp_path / "b.npy", "b"))
    assert len(data) == 4
    assert any("different sample counts" in n for n in data.notes)
    assert "different sample counts" in caplog.text


def test_one_npz_keyed_by_every_input(tmp_path, two_inputs):
    np.savez(tmp_path / "both.npz", a=np.ones((3, 4)), b=np.zeros((3, 4)))
    data = load(two_inputs, CalibSource(tmp_path / "both.npz"))
    chunk = next(data.chunks(3))
    assert chunk["a"].sum() == 12 and chunk["b"].sum() == 0


# --- reader, in-memory data, evaluation sets -------------------------------------------------

def test_reader_protocol_and_fixed_batch(tmp_path):
    from onnxruntime.quantization import CalibrationDataReader

    model = relu_model(tmp_path / "fixed.onnx", [1, 3, 4, 4])
    np.save(tmp_path / "a.npy", np.random.default_rng(0).random((5, 3, 4, 4), np.float32))
    data = load(model, CalibSource(tmp_path / "a.npy"))
    reader = data.as_reader(batch=4)          # the model's fixed batch 1 wins
    assert isinstance(reader, CalibrationDataReader)
    batches = list(iter(reader.get_next, None))
    assert len(batches) == 5 and all(b["input"].shape == (1, 3, 4, 4) for b in batches)
    assert reader.get_next() is None
    reader.rewind()
    assert np.array_equal(reader.get_next()["input"], batches[0]["input"])

    dynamic = relu_model(tmp_path / "dyn.onnx", ["N", 3, 4, 4])
    data = load(dynamic, CalibSource(tmp_path / "a.npy"))
    shapes = [b["input"].shape[0] for b in iter(data.as_reader(batch=2).get_next, None)]
    assert shapes == [2, 2, 1]


def test_reader_drives_onnxruntime_calibration(tmp_path):
    from onnxruntime.quantization import QuantFormat, quantize_static

    model = builders.save(builders.tiny_cnn(), tmp_path / "tiny.onnx")
    np.save(tmp_path / "a.npy", np.random.default_rng(0).random((8, 3, 16, 16), np.float32))
    data = load(model, CalibSource(tmp_path / "a.npy"))
    quantize_static(str(model), str(tmp_path / "q.onnx"), data.as_reader(batch=4),
                    quant_format=QuantFormat.QDQ)
    quantized = onnx.load(str(tmp_path / "q.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in quantized.graph.node)


def test_from_arrays_and_subset():
    data = CalibrationData.from_arrays({"x": np.arange(10, dtype=np.float32)[:, None]})
    assert len(data) == 10 and len(data.subset(3)) == 3
    assert next(data.subset(3).chunks(10))["x"].ravel().tolist() == [0, 1, 2]


def test_load_npz_feeds_digits_sample():
    feeds, labels = load_npz_feeds(SAMPLES / "digits_test.npz", ["input"])
    assert feeds["input"].shape[1:] == (1, 8, 8)
    assert labels is not None and labels.shape == (feeds["input"].shape[0],)


def test_load_npz_feeds_refuses_pickles_and_mismatches(tmp_path):
    np.savez(tmp_path / "obj.npz", input=np.array([{"a": 1}], dtype=object))
    with pytest.raises(BadInputError, match="cannot read"):
        load_npz_feeds(tmp_path / "obj.npz", ["input"])
    np.savez(tmp_path / "mismatch.npz", input=np.ones((3, 2)), labels=np.arange(2))
    with pytest.raises(BadInputError, match="different sample counts"):
        load_npz_feeds(tmp_path / "mismatch.npz", ["input"])
    with pytest.raises(NotFoundError):
        load_npz_feeds(tmp_path / "nope.npz", ["input"])


# --- preprocess functions --------------------------------------------------------------------

def write_module(path: Path, body: str) -> Path:
    path.write_text("import numpy as np\n\n" + body)
    return path


def test_preprocess_function_receives_paths_and_info(tmp_path, model):
    folder = tmp_path / "files"
    folder.mkdir()
    for i in range(3):
        (folder / f"s{i}.dat").write_text(str(i))
    module = write_module(tmp_path / "prep.py", (
        "def load(paths, info):\n"
        "    assert info['input_name'] == 'input' and info['input_shape'] == [1, 3, 4, 4]\n"
        "    return np.stack([np.full((3, 4, 4), float(open(p).read())) for p in paths])\n"))
    source = CalibSource(folder, preprocess=Preprocess(function=f"{module}:load"))
    data = load(model, source)
    out = all_samples(data, size=2)
    assert out.dtype == np.float32 and list(out[:, 0, 0, 0]) == [0, 1, 2]


def test_preprocess_function_raising_is_wrapped(tmp_path, model):
    save_png(tmp_path / "a.png", 1)
    module = write_module(tmp_path / "bad.py", "def load(paths, info):\n"
                                               "    raise RuntimeError('cannot decode')\n")
    data = load(model, CalibSource(tmp_path / "a.png",
                                   preprocess=Preprocess(function=f"{module}:load")))
    with pytest.raises(BadInputError) as exc:
        next(data.chunks(1))
    assert f"{module}:load" in exc.value.message and "cannot decode" in exc.value.message


def test_preprocess_function_wrong_shape_or_dtype(tmp_path, model):
    save_png(tmp_path / "a.png", 1)
    module = write_module(tmp_path / "shape.py", (
        "def wrong_shape(paths, info):\n    return np.zeros((len(paths), 4, 4, 3), np.float32)\n"
        "def wrong_dtype(paths, info):\n    return np.zeros((len(paths), 3, 4, 4), np.int32)\n"
        "def not_array(paths, info):\n    return [1, 2]\n"))
    for func, expected in (("wrong_shape", "returned shape (1, 4, 4, 3), expected (1, 3, 4, 4)"),
                           ("wrong_dtype", "returned dtype int32, expected float32"),
                           ("not_array", "returned list")):
        data = load(model, CalibSource(tmp_path / "a.png",
                                       preprocess=Preprocess(function=f"{module}:{func}")))
        with pytest.raises(BadInputError) as exc:
            next(data.chunks(1))
        assert expected in exc.value.message


def test_preprocess_function_missing_file_or_function(tmp_path, model):
    save_png(tmp_path / "a.png", 1)
    with pytest.raises(NotFoundError):
        load(model, CalibSource(tmp_path / "a.png",
                                preprocess=Preprocess(function=f"{tmp_path}/none.py:f")))
    module = write_module(tmp_path / "m.py", "x = 1\n")
    with pytest.raises(BadInputError, match="no function 'f'"):
        load(model, CalibSource(tmp_path / "a.png", preprocess=Preprocess(function=f"{module}:f")))
