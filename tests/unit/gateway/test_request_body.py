from __future__ import annotations

import pytest

from aiperimeter.errors import BadRequest
from aiperimeter.gateway.stages.request_body import parse_json_object

FIELDS = ("model", "name")


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"model":"a","model":"b"}', id="plain-duplicate"),
        pytest.param(b'{"model":"a","mod\\u0065l":"b"}', id="escaped-duplicate"),
        pytest.param(b'{"\\u006dodel":"a","model":"a"}', id="escaped-first"),
        pytest.param(b'{"name":"a","name":"b"}', id="legacy-field-duplicate"),
        # Go's encoding/json (Ollama) matches keys without case and keeps the last: "Model" would win.
        pytest.param(b'{"model":"a","Model":"b"}', id="case-variant"),
        pytest.param(b'{"MODEL":"b"}', id="case-variant-alone"),
        pytest.param(b'{"model":"a","mod\\u0045l":"b"}', id="escaped-case-variant"),
        pytest.param(b'{"model":"a","mod\xc3\xa9l":"b"}', id="non-ascii-key"),
    ],
)
def test_duplicate_model_fields_are_refused(body: bytes) -> None:
    with pytest.raises(BadRequest) as error:
        parse_json_object(body, FIELDS)
    assert error.value.code == "ambiguous_model"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"model":"a","messages":[{"model":"x"},{"model":"y"}]}', id="nested-model-keys"),
        pytest.param(b'{"model":"a","prompt":"\\u0041 \\"model\\""}', id="escapes-elsewhere"),
        pytest.param(b'{"options":{"model":"x","model":"y"},"model":"a"}', id="nested-duplicate"),
    ],
)
def test_nested_model_keys_are_not_duplicates(body: bytes) -> None:
    assert parse_json_object(body, FIELDS)["model"] == "a"


@pytest.mark.parametrize(
    "body", [b"", b"null", b"[]", b'"s"', b"{", b"{'a': 1}", b'{"a": NaN}', b'\xef\xbb\xbf{"a":1}', b'{"a":"\xff"}']
)
def test_only_json_objects(body: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_json_object(body, FIELDS)


def test_deep_nesting_with_escapes_is_a_client_error() -> None:
    body = b'{"model":"a","x":"\\u0041","y":' + b"[" * 1010 + b"]" * 1010 + b"}"
    with pytest.raises(BadRequest) as error:
        parse_json_object(body, FIELDS)
    assert error.value.code == "invalid_json"
