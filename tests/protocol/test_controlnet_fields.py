"""``controlNet`` items on the wire: the SDKs' shapes accepted, the contradictions refused with the item's path."""

from __future__ import annotations

import json

from protocol import decode_frame
from protocol.errors import ErrorCode
from protocol.inference import ImageInference

UUID = "0f8fad5b-d9cb-469f-a165-70867728950e"


def decode(*items: dict):
    task = {"taskType": "imageInference", "taskUUID": UUID, "model": "wisp:tiny-sd15@1", "positivePrompt": "a cat",
            "controlNet": list(items)}
    return decode_frame(json.dumps([task]).encode())[0]


def test_the_05_sdks_item_with_every_field_null_is_accepted():
    item = {"model": "wisp:tiny-controlnet-sd15@1", "guideImage": "0f8fad5b-d9cb-469f-a165-70867728950f", "weight": None,
            "startStep": None, "endStep": None, "startStepPercentage": None, "endStepPercentage": None, "controlMode": None}
    decoded = decode(item)
    assert decoded.error is None and isinstance(decoded.task, ImageInference)
    assert decoded.task.controlNet[0].guideImage.endswith("f")


def test_canny_thresholds_need_the_preprocessor_and_an_order():
    assert decode({"model": "m:c@1", "guideImage": "x", "preprocessor": "canny", "lowThresholdCanny": 100}).error is None
    alone = decode({"model": "m:c@1", "guideImage": "x", "lowThresholdCanny": 100})
    assert alone.error.code == ErrorCode.INVALID_PARAMETER and alone.error.parameter == "controlNet[0].lowThresholdCanny"
    reversed_ = decode({"model": "m:c@1", "guideImage": "x", "preprocessor": "canny", "lowThresholdCanny": 200, "highThresholdCanny": 100})
    assert reversed_.error.parameter == "controlNet[0].lowThresholdCanny"


def test_steps_and_percentages_are_not_mixed_and_ranges_are_not_empty():
    both = decode({"model": "m:c@1", "guideImage": "x"}, {"model": "m:d@1", "guideImage": "x", "startStep": 1, "startStepPercentage": 10})
    assert both.error.parameter == "controlNet[1].startStepPercentage"
    empty = decode({"model": "m:c@1", "guideImage": "x", "startStep": 3, "endStep": 3})
    assert empty.error.code == ErrorCode.INVALID_PARAMETER and empty.error.parameter == "controlNet[0].endStep"


def test_weights_modes_and_counts_have_bounds():
    assert decode({"model": "m:c@1", "guideImage": "x", "weight": 3}).error.parameter == "controlNet[0].weight"
    assert decode({"model": "m:c@1", "guideImage": "x", "controlMode": "loud"}).error.parameter == "controlNet[0].controlMode"
    assert decode(*[{"model": f"m:c{i}@1", "guideImage": "x"} for i in range(5)]).error.parameter == "controlNet"
