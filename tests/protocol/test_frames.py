"""protocol/: decoding, validation and encoding, driven with literal bytes."""

from __future__ import annotations

import json
import subprocess
import sys

import msgspec
import pytest

from protocol import decode_frame, encode_data, encode_errors
from protocol.errors import ErrorCode, WireError
from protocol.frames import MAX_OUT_FRAME_BYTES
from protocol.inference import ImageInference, ImageResult
from protocol.session import Authentication, Ping

UUID = "0f8fad5b-d9cb-469f-a165-70867728950e"


def inference(**fields) -> dict:
    base = {"taskType": "imageInference", "taskUUID": UUID, "model": "wisp:tiny-sd15@1", "positivePrompt": "a cat"}
    base.update(fields)
    return base


def one(task: dict):
    decoded = decode_frame(json.dumps([task]).encode())
    assert isinstance(decoded, list) and len(decoded) == 1
    return decoded[0]


def test_protocol_is_pure():
    code = (
        "import sys, protocol, protocol.frames, protocol.inference, protocol.session, protocol.errors;"
        "bad = [m for m in ('asyncio', 'torch', 'websockets', 'diffusers', 'uvloop', 'httpx', 'engine', 'server') if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_valid_inference_defaults():
    d = one(inference())
    assert d.error is None
    task = d.task
    assert isinstance(task, ImageInference)
    assert (task.width, task.height, task.numberResults) == (512, 512, 1)
    assert task.outputType == "URL" and task.outputFormat == "PNG" and task.deliveryMethod == "sync"
    assert task.output_types == ["URL"]


def test_session_tasks_decode():
    decoded = decode_frame(b'[{"taskType":"authentication","apiKey":"k"},{"taskType":"ping","ping":true}]')
    assert isinstance(decoded[0].task, Authentication) and decoded[0].task.apiKey == "k"
    assert isinstance(decoded[1].task, Ping)


@pytest.mark.parametrize(
    "field,value,lo,hi",
    [
        ("width", 63, 64, 2048),
        ("width", 2056, 64, 2048),
        ("height", 100, 64, 2048),  # not a multiple of 8
        ("steps", 0, 1, 100),
        ("steps", 101, 1, 100),
        ("CFGScale", 50.5, 0, 50),
        ("numberResults", 21, 1, 20),
        ("strength", 1.5, 0, 1),
        ("seed", -1, 0, 2**63 - 1),
        ("clipSkip", 3, 0, 2),
        ("outputQuality", 19, 20, 99),
    ],
)
def test_ranges_become_invalid_parameter_with_bounds(field, value, lo, hi):
    d = one(inference(**{field: value}))
    assert d.task is None
    err = d.error
    assert err.code == ErrorCode.INVALID_PARAMETER
    assert err.parameter == field
    assert err.min == lo and err.max == hi
    assert err.taskUUID == UUID and err.taskType == "imageInference"


def test_seed_too_big_is_refused():
    d = one(inference(seed=2**63))
    assert d.error is not None and d.error.parameter == "seed"


def test_wrong_type_names_parameter():
    d = one(inference(steps="4"))
    assert d.error.code == ErrorCode.INVALID_PARAMETER and d.error.parameter == "steps"
    assert d.error.message == "Invalid value for `steps`: must be a whole number from 1 to 100, not text"


def test_missing_fields():
    task = inference()
    del task["taskUUID"]
    d = one(task)
    assert d.error.code == ErrorCode.MISSING_PARAMETER and d.error.parameter == "taskUUID"
    task = inference()
    del task["positivePrompt"]
    assert one(task).error.parameter == "positivePrompt"


def test_task_uuid_must_be_uuid():
    d = one(inference(taskUUID="../../etc/passwd"))
    assert d.error.code == ErrorCode.INVALID_TASK_UUID
    assert d.error.taskUUID == "../../etc/passwd"


def test_unknown_and_unsupported_fields():
    d = one(inference(bogusField=1))
    assert d.error.code == ErrorCode.UNKNOWN_PARAMETER and d.error.parameter == "bogusField"
    d = one(inference(controlNet=[{"model": "x"}]))  # ControlNet is supported: an item without its guide is incomplete
    assert d.error.code == ErrorCode.MISSING_PARAMETER and d.error.parameter == "controlNet[0].guideImage"
    d = one(inference(ipAdapters=[{"model": "x"}]))
    assert d.error.code == ErrorCode.UNSUPPORTED_PARAMETER and d.error.parameter == "ipAdapters"
    d = one(inference(outpaint={"top": 64}))  # outpaint is offered: it needs a seed image
    assert d.error.code == ErrorCode.MISSING_PARAMETER and d.error.parameter == "seedImage"
    d = one(inference(safety={"checkContent": True}))
    assert d.error.code == ErrorCode.UNSUPPORTED_PARAMETER
    # accepted (documented): ttl, useCache; an empty controlNet list asks for nothing
    assert one(inference(ttl=3600, useCache=True, controlNet=[])).error is None


def test_cross_field_rules():
    assert one(inference(maskImage="abc")).error.parameter == "seedImage"
    assert one(inference(outputType=[])).error.parameter == "outputType"
    err = one(inference(lora=[{"model": "a:1@1"}, {"model": "a:1@1", "weight": 0.5}])).error
    assert err.parameter == "lora[1].model"
    err = one(inference(lora=[{"model": "a:1@1", "weight": 9}])).error
    assert err.parameter == "lora[0].weight"


def test_output_types_list_dedup():
    d = one(inference(outputType=["URL", "dataURI", "URL"]))
    assert d.task.output_types == ["URL", "dataURI"]


def test_unknown_task_type_keeps_uuid():
    d = one({"taskType": "videoInference", "taskUUID": UUID})
    assert d.error.code == ErrorCode.UNSUPPORTED_TASK_TYPE
    assert d.error.taskUUID == UUID and d.error.taskType == "videoInference"


@pytest.mark.parametrize("frame", [b"{not json", b'{"taskType":"ping"}', b"[]", b"42", b'"x"'])
def test_bad_frames(frame):
    result = decode_frame(frame)
    assert isinstance(result, WireError)
    assert result.code == ErrorCode.INVALID_FRAME


def test_each_element_is_independent():
    frame = json.dumps([inference(), 5, inference(width=1), {"taskType": "ping", "ping": True}, {"taskUUID": UUID}]).encode()
    decoded = decode_frame(frame)
    assert [d.task is not None for d in decoded] == [True, False, False, True, False]
    assert decoded[1].error.code == ErrorCode.INVALID_TASK and decoded[1].error.taskIndex == 1
    assert decoded[2].error.taskIndex == 2
    assert decoded[4].error.code == ErrorCode.MISSING_PARAMETER and decoded[4].error.parameter == "taskType"


def test_error_encoding_omits_unset_fields():
    d = one(inference(steps=0))
    frame = json.loads(encode_errors([d.error])[0])
    assert set(frame) == {"errors"}
    err = frame["errors"][0]
    assert {"code", "message", "parameter", "taskType", "taskUUID", "min", "max"} <= set(err)
    assert "documentation" not in err and "type" not in err


def result(i: int, size: int = 0) -> ImageResult:
    return ImageResult(
        taskType="imageInference", taskUUID=UUID, imageUUID=f"img-{i}", seed=i, NSFWContent=False, imageBase64Data="A" * size
    )


def test_data_items_never_carry_error_keys():
    item = json.loads(encode_data([result(1)])[0])["data"][0]
    assert not {"code", "error", "errorId"} & set(item)
    assert item["taskType"] == "imageInference" and item["NSFWContent"] is False


def test_frames_split_under_limit_and_keep_order():
    items = [result(i, 300_000) for i in range(7)]
    frames = encode_data(items)
    assert len(frames) > 1
    assert all(len(f) <= MAX_OUT_FRAME_BYTES for f in frames)
    seeds = [item["seed"] for f in frames for item in json.loads(f)["data"]]
    assert seeds == list(range(7))


def test_one_huge_item_goes_out_alone():
    frames = encode_data([result(0, 10), result(1, 2_000_000), result(2, 10)])
    assert len(frames) == 3
    assert len(frames[1]) > MAX_OUT_FRAME_BYTES
    assert json.loads(frames[1])["data"][0]["seed"] == 1


def test_small_items_share_a_frame():
    frames = encode_data([result(i) for i in range(20)])
    assert len(frames) == 1 and len(json.loads(frames[0])["data"]) == 20


def test_structs_round_trip():
    task = one(inference(seed=5, lora=[{"model": "a:b@1", "weight": 0.5}])).task
    again = msgspec.convert(msgspec.to_builtins(task), ImageInference)
    assert again == task


def test_valid_json_msgspec_refuses_still_routes_per_task():
    frame = ('[{"taskType":"imageInference","taskUUID":"%s","model":"m","positivePrompt":"p","CFGScale":1e400},'
             '{"taskType":"ping","ping":true}]' % UUID).encode()
    decoded = decode_frame(frame)
    assert isinstance(decoded, list)
    assert decoded[0].error.taskUUID == UUID and decoded[0].error.parameter == "CFGScale"
    assert isinstance(decoded[1].task, Ping)


def test_invalid_utf8_inside_a_string_is_a_bad_frame():
    result = decode_frame(b'[{"taskType": "ping", "ping": true, "note": "\xff"}]')
    assert isinstance(result, WireError) and result.code == ErrorCode.INVALID_FRAME


def test_empty_image_reference_is_refused():
    assert one(inference(seedImage="")).error.parameter == "seedImage"


def test_an_encoded_search_result_is_byte_identical_to_the_struct():
    """The gateway answers repeated searches with the results encoded once; the wire must not tell."""
    import msgspec

    from protocol.models import EncodedModelSearchResult, ModelInfo, ModelSearchResult

    results = [ModelInfo(air="wisp:tiny-sd15@1", name="tiny", version="1", category="checkpoint", architecture="sd1x",
                         tags=["builtin"], heroImage="", private=False, comment="ünïcode \"quoted\"", defaultCFG=7.0)]
    plain = ModelSearchResult(taskType="modelSearch", taskUUID="u\"1", totalResults=3, results=results)
    encoded = EncodedModelSearchResult(taskType="modelSearch", taskUUID="u\"1", totalResults=3,
                                       results=msgspec.Raw(msgspec.json.encode(results)))
    assert msgspec.json.encode(encoded) == msgspec.json.encode(plain)
    assert encoded.__struct_fields__ == plain.__struct_fields__
