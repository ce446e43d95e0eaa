"""``edgetune eval --metric map`` on a real local agent (mutual TLS): the shipped shapes
detector decoded on the board (yolov5) and post-NMS boxes (boxes), both mAPs checked against
pycocotools on the same predictions; the bad inputs; an agent without the feature."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from edgetune.device.detection import decode
from edgetune.host.errors import ExitStatus
from tests.host_fixtures import RunningAgent, local_agent, run_cli  # noqa: F401
from tests.test_detection import coco_map

pytest.importorskip("pycocotools")

SAMPLES = Path(__file__).resolve().parent.parent / "host" / "samples"
DETECTOR = SAMPLES / "shapes_det.onnx"
TEST_SET = SAMPLES / "shapes_det_test.npz"


def test_yolov5_map_on_the_board_matches_pycocotools(capsys, local_agent: RunningAgent) -> None:
    r = run_cli(capsys, "eval", str(DETECTOR), "--dataset", str(TEST_SET), "--metric", "map",
                "--decoder", "yolov5", "--batch", "32", *local_agent.conn(), "--json")
    assert r.code == 0, r.err
    result = r.json["results"][0]
    metrics = result["metrics"]
    assert result["samples"] == 300 and metrics["map_classes"] == 3
    data = np.load(TEST_SET)
    out = ort.InferenceSession(str(DETECTOR), providers=["CPUExecutionProvider"]).run(
        None, {"images": data["images"]})[0]
    dets = decode("yolov5", out)                        # the defaults: conf 0.001, iou 0.6
    want_map, want_map50 = coco_map(dets, data["boxes"], data["classes"], data["image_ids"])
    assert metrics["map"] == pytest.approx(want_map, abs=1e-4)
    assert metrics["map50"] == pytest.approx(want_map50, abs=1e-4)
    assert want_map50 > 0.95 and want_map > 0.7         # the sample detector works

    strict = run_cli(capsys, "eval", str(DETECTOR), "--dataset", str(TEST_SET), "--metric",
                     "map", "--decoder", "yolov5", "--conf", "0.5", "--iou", "0.3", "--batch",
                     "32", *local_agent.conn(), "--json")
    assert strict.code == 0, strict.err
    dets = decode("yolov5", out, conf=0.5, iou=0.3)
    want_map, want_map50 = coco_map(dets, data["boxes"], data["classes"], data["image_ids"])
    assert strict.json["results"][0]["metrics"]["map"] == pytest.approx(want_map, abs=1e-4)
    assert want_map != pytest.approx(metrics["map"], abs=1e-4)   # the thresholds reached it


def identity_model(k: int) -> onnx.ModelProto:
    """A 'detector' whose output is its input: post-NMS rows given in the dataset."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["dets_in"], ["dets"], name="same")], "boxes",
        [helper.make_tensor_value_info("dets_in", TensorProto.FLOAT, ["n", k, 6])],
        [helper.make_tensor_value_info("dets", TensorProto.FLOAT, ["n", k, 6])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_boxes_decoder_on_the_board(capsys, local_agent: RunningAgent, tmp_path: Path) -> None:
    from tests.test_detection import random_scene
    rng = np.random.default_rng(11)
    dets, boxes, classes = random_scene(rng, images=25, max_boxes=5, classes=3, noise=0.07)
    k = max(len(d) for d in dets)
    rows = np.zeros((25, k, 6), np.float32)
    rows[..., 5] = -1                                  # padding
    for i, d in enumerate(dets):
        rows[i, :len(d)] = d
    ids = np.arange(100, 125, dtype=np.int64)
    np.savez(tmp_path / "d.npz", dets_in=rows, boxes=boxes, classes=classes, image_ids=ids)
    onnx.save(identity_model(k), str(tmp_path / "m.onnx"))
    r = run_cli(capsys, "eval", str(tmp_path / "m.onnx"), "--dataset", str(tmp_path / "d.npz"),
                "--metric", "map", "--decoder", "boxes", *local_agent.conn(), "--json")
    assert r.code == 0, r.err
    kept = [d[d[:, 4] >= 0.001].astype(np.float32).astype(np.float64) for d in dets]
    want_map, want_map50 = coco_map(kept, boxes, classes, ids)
    metrics = r.json["results"][0]["metrics"]
    assert metrics["map"] == pytest.approx(want_map, abs=1e-4)
    assert metrics["map50"] == pytest.approx(want_map50, abs=1e-4)


def test_map_on_a_dataset_without_boxes(capsys, local_agent: RunningAgent,
                                        tmp_path: Path) -> None:
    data = np.load(TEST_SET)
    np.savez(tmp_path / "noboxes.npz", images=data["images"][:4])
    r = run_cli(capsys, "eval", str(DETECTOR), "--dataset", str(tmp_path / "noboxes.npz"),
                "--metric", "map", "--decoder", "yolov5", *local_agent.conn(), "--json")
    assert r.code == ExitStatus.AGENT, (r.code, r.err)      # the board refused the job
    assert "the dataset has no 'boxes' or 'classes' array" in r.out


def test_decoder_that_does_not_fit_the_output(capsys, local_agent: RunningAgent) -> None:
    r = run_cli(capsys, "eval", str(DETECTOR), "--dataset", str(TEST_SET), "--metric", "map",
                "--decoder", "boxes", *local_agent.conn(), "--json")
    assert r.code == ExitStatus.AGENT, (r.code, r.err)
    assert "decoder 'boxes' needs an output shaped [N, K, 6]" in r.out
    assert "'output' is [1, 64, 8]" in r.out
    info = run_cli(capsys, "info", *local_agent.conn(), "--json")      # still serving
    assert info.code == 0


@pytest.mark.parametrize("argv,words", [
    (("--metric", "map"), "--metric map needs --decoder"),
    (("--metric", "top1", "--decoder", "yolov5"), "are for --metric map"),
    (("--metric", "map", "--decoder", "yolov5", "--conf", "1.5"), "--conf 1.5 is out of range"),
    (("--metric", "map", "--decoder", "yolov5", "--iou", "0"), "--iou 0 is out of range"),
])
def test_flags_checked_before_connecting(capsys, argv, words) -> None:
    r = run_cli(capsys, "eval", str(DETECTOR), "--dataset", str(TEST_SET), *argv,
                "--address", "127.0.0.1:1")
    assert r.code == ExitStatus.USAGE and words in r.err


def test_an_agent_without_detection_is_refused(capsys, local_agent: RunningAgent,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """An agent of before this feature would ignore the decoder and report no mAP: the
    host refuses, naming the agent's version (GetInfo as such an agent answers it)."""
    from edgetune.host.client import AgentClient
    real = AgentClient.info

    def older(self):
        info = real(self)
        return dataclasses.replace(info, agent_version="0.1.9",
                                   features=tuple(f for f in info.features if f != "detection"))
    monkeypatch.setattr(AgentClient, "info", older)
    r = run_cli(capsys, "eval", str(DETECTOR), "--dataset", str(TEST_SET), "--metric", "map",
                "--decoder", "yolov5", *local_agent.conn(), "--json")
    assert r.code == ExitStatus.INCOMPATIBLE, (r.code, r.err)
    assert "runs edgetune 0.1.9, which does not compute detection mAP" in r.out   # --json


def test_post_processing_kept_precise_recovers_naive_int8s_map(
        capsys, local_agent: RunningAgent, tmp_path: Path) -> None:
    """docs/quantization.md's numbers: naive INT8 loses mAP@0.5:0.95 in the head's shared
    uint8 output; --truncate head (the decoding float) with the head conv an int16 island
    recovers most of it, measured on the board."""
    calib = SAMPLES / "shapes_det_calib.npz"
    variants = {"naive": (), "island": ("--truncate", "head", "--int16", "head_conv")}
    maps = {}
    for name, extra in variants.items():
        out = tmp_path / f"{name}.onnx"
        q = run_cli(capsys, "quantize", str(DETECTOR), "-o", str(out), "--calib", str(calib),
                    "--no-record", *extra)
        assert q.code == 0, q.err
    r = run_cli(capsys, "eval", str(DETECTOR), str(tmp_path / "naive.onnx"),
                str(tmp_path / "island.onnx"), "--dataset", str(TEST_SET), "--metric", "map",
                "--decoder", "yolov5", "--batch", "32", *local_agent.conn(), "--json")
    assert r.code == 0, r.err
    for row, name in zip(r.json["results"], ("fp32", "naive", "island")):
        maps[name] = row["metrics"]["map"]
    print("mAP@0.5:0.95", maps)
    lost = maps["fp32"] - maps["naive"]
    assert lost > 0.1                                        # naive INT8 does lose
    assert maps["island"] - maps["naive"] >= 0.8 * lost      # and most of it comes back
