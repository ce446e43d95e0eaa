"""``eval --metric map``: the detection flags (``--decoder``, ``--conf``, ``--iou``) and their
checks, made before any connection. The board decodes, runs NMS and computes mAP
(``edgetune.device.detection``); the dataset holds ``boxes`` and ``classes``."""

from __future__ import annotations

import argparse
import math
from typing import Sequence, Tuple

from edgetune.device.detection import DECODERS, DEFAULT_CONF, DEFAULT_IOU
from edgetune.host.errors import UsageError


def add_detection_flags(parser: argparse.ArgumentParser) -> None:
    d = parser.add_argument_group("detection (--metric map)")
    d.add_argument("--decoder", choices=DECODERS,
                   help="how to read the model's output: yolov5 = raw [N, anchors, 5+classes] "
                        "rows (cx, cy, w, h, objectness, class scores), NMS on the board; "
                        "boxes = post-NMS [N, K, 6] rows (x1, y1, x2, y2, score, class)")
    d.add_argument("--conf", type=float, metavar="X",
                   help=f"score threshold (default {DEFAULT_CONF:g}, as YOLOv5's val.py)")
    d.add_argument("--iou", type=float, metavar="X",
                   help=f"NMS IoU threshold (default {DEFAULT_IOU:g})")


def detection_options(args: argparse.Namespace, metrics: Sequence[str]
                      ) -> Tuple[str, float, float]:
    """(decoder, conf, iou) for the EvaluateSpec; UsageError for flags that do not fit."""
    decoder = getattr(args, "decoder", None) or ""
    conf = getattr(args, "conf", None)
    iou = getattr(args, "iou", None)
    for name, value in (("--conf", conf), ("--iou", iou)):
        if value is not None and not (math.isfinite(value) and 0.0 < value <= 1.0):
            raise UsageError(f"{name} {value:g} is out of range", hint="give a number in (0, 1]")
    if "map" in metrics and not decoder:
        raise UsageError("--metric map needs --decoder",
                         hint=f"--decoder {' or --decoder '.join(DECODERS)}: how the model's "
                              "output is read")
    if (decoder or conf is not None or iou is not None) and metrics and "map" not in metrics:
        raise UsageError("--decoder, --conf and --iou are for --metric map",
                         hint="add map to --metric")
    if (conf is not None or iou is not None) and not decoder:
        raise UsageError("--conf and --iou need --decoder (and a detection dataset)")
    return decoder, conf or 0.0, iou or 0.0
