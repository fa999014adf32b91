"""Validation errors read as plain words; code, parameter, min and max stay what clients read."""

from __future__ import annotations

import json

import pytest

from protocol import decode_frame
from protocol.errors import ErrorCode
from protocol.plain import plain_message

UUID = "0f8fad5b-d9cb-469f-a165-70867728950e"


def error_for(task_type: str, **fields):
    task = {"taskType": task_type, "taskUUID": UUID, **fields}
    decoded = decode_frame(json.dumps([task]).encode())[0]
    assert decoded.error is not None, decoded
    return decoded.error


def inference(**fields):
    return error_for("imageInference", **{"model": "wisp:tiny-sd15@1", "positivePrompt": "a cat", **fields})


@pytest.mark.parametrize(
    ("fields", "parameter", "words"),
    [
        ({"steps": 1000}, "steps", "must be a whole number from 1 to 100"),
        ({"steps": 1.5}, "steps", "must be a whole number from 1 to 100, not a number with a fraction"),
        ({"CFGScale": -1}, "CFGScale", "must be a number from 0 to 50"),
        ({"positivePrompt": ""}, "positivePrompt", "must not be empty"),
        ({"positivePrompt": "a" * 5000}, "positivePrompt", "must be at most 3000 characters long"),
        ({"width": 65}, "width", "must be a multiple of 8 (and from 64 to 2048)"),
        ({"outputType": "zip"}, "outputType", "must be one of URL, base64Data, dataURI (got 'zip')"),
        ({"lora": "x"}, "lora", "must be a list, not text"),
        ({"lora": [{"model": "a:b@1", "weight": "q"}]}, "lora[0].weight", "must be a number from -4 to 4, not text"),
        ({"checkNSFW": "yes"}, "checkNSFW", "must be true or false, not text"),
    ],
)
def test_inference_field_errors_are_plain_words(fields, parameter, words):
    error = inference(**fields)
    assert error.code == ErrorCode.INVALID_PARAMETER and error.parameter == parameter
    assert error.message == f"Invalid value for `{parameter}`: {words}"
    assert "Expected" not in error.message and "`int" not in error.message


def test_bounds_stay_machine_readable():
    error = inference(steps=0)
    assert (error.min, error.max) == (1, 100)


def test_an_air_error_shows_the_form_not_a_regex():
    error = error_for("modelUpload", air="my model", category="lora", architecture="sd1x", format="safetensors",
                      downloadURL="http://example.com/a.safetensors", uniqueIdentifier="a" * 64, name="n", version="1")
    assert error.parameter == "air"
    assert "source:id@version" in error.message and "^[" not in error.message


def test_a_category_error_lists_the_choices():
    error = error_for("modelUpload", air="a:b@1", category="loraz", architecture="sd1x", format="safetensors",
                      downloadURL="http://example.com/a.safetensors", uniqueIdentifier="a" * 64, name="n", version="1")
    assert "must be one of checkpoint, controlnet, embeddings, lora, lycoris, upscaler, vae (got 'loraz')" in error.message


def test_text_written_for_people_is_kept():
    assert plain_message("LoRA a is listed twice") == "LoRA a is listed twice"
