"""Read the body within its size limit, parse JSON bodies, and hold keys to their models.

A body the gateway cannot read exactly as the upstream will (compressed, not JSON, the model named twice) is
refused, never forwarded: a check the upstream could read differently is no check.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar
from urllib.parse import parse_qsl

import orjson

from aiperimeter.errors import BadRequest, Forbidden, PayloadTooLarge, UnsupportedMediaType
from aiperimeter.gateway.pipeline import Exchange, Stage


class _Pairs(dict[str, Any]):
    """A JSON object that remembers the keys it saw more than once, compared without case."""

    duplicates: frozenset[str] = frozenset()


def _pairs_hook(pairs: list[tuple[str, Any]]) -> _Pairs:
    obj = _Pairs(pairs)
    folded = [k.lower() for k, _ in pairs]
    if len(set(folded)) != len(folded):
        seen: set[str] = set()
        obj.duplicates = frozenset(k for k in folded if k in seen or seen.add(k))  # type: ignore[func-returns-value]
    return obj


def _ambiguous() -> BadRequest:
    return BadRequest("ambiguous_model", "The request body names its model more than once, or in an unusual spelling.")


def parse_json_object(body: bytes, model_fields: tuple[str, ...]) -> dict[str, Any]:
    """Parse a request body; refuse anything but one JSON object whose model fields appear once, spelled exactly.

    Decoders disagree where a check could be fooled: Go's encoding/json (Ollama) matches keys without regard to case
    and keeps the last of duplicates, orjson keeps the last, others the first. So a top-level key that is a model
    field in any case or escape spelling must be that field, spelled exactly, once.
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest("invalid_json", "The request body is not valid JSON (UTF-8).") from None
    if not isinstance(doc, dict):
        raise BadRequest("invalid_json", "The request body must be a JSON object.")
    if not model_fields:
        return doc
    for key in doc:
        if not key.isascii() or (key.lower() in model_fields and key not in model_fields):
            raise _ambiguous()
    # A case variant is refused above; orjson collapses only identical duplicates, which an exact count finds.
    if b"\\u" in body or any(body.count(b'"%s"' % f.encode()) > 1 for f in model_fields):
        try:
            top = json.loads(body, object_pairs_hook=_pairs_hook)
        except (RecursionError, ValueError):
            raise BadRequest("invalid_json", "The request body is nested too deeply.") from None
        if isinstance(top, _Pairs) and top.duplicates & set(model_fields):
            raise _ambiguous()
    return doc


class RequestBody(Stage):
    name: ClassVar[str] = "request_body"

    def __init__(self, max_bytes: int, idle_timeout: float) -> None:
        self.max_bytes = max_bytes
        self.idle_timeout = idle_timeout

    async def _read(self, ex: Exchange) -> bytes:
        request = ex.request
        length = request.content_length
        if length is not None and length > self.max_bytes:
            raise PayloadTooLarge("body_too_large", f"The request body is larger than {self.max_bytes} bytes.")
        chunks, size = [], 0
        content = request.content
        while True:
            chunk = content.read_nowait()  # what has arrived already needs no timer
            if not chunk:
                if content.at_eof():
                    break
                try:
                    async with asyncio.timeout(self.idle_timeout):
                        chunk = await content.readany()
                except TimeoutError:
                    raise BadRequest("body_timeout", "The request body stopped arriving.") from None
                if not chunk:
                    break
            size += len(chunk)
            if size > self.max_bytes:
                raise PayloadTooLarge("body_too_large", f"The request body is larger than {self.max_bytes} bytes.")
            chunks.append(chunk)
        return b"".join(chunks)

    async def on_request(self, ex: Exchange) -> None:
        route = ex.route
        assert route is not None
        request = ex.request
        has_body = bool(request.content_length) or request.headers.get("Transfer-Encoding") is not None
        if route.body == "none":
            if has_body:
                raise BadRequest("unexpected_body", "This route takes no request body.")
        else:
            encodings = {
                token.strip().lower()
                for value in request.headers.getall("Content-Encoding", ())
                for token in value.split(",")
            }
            if encodings - {"identity", ""}:
                raise UnsupportedMediaType("encoded_body", "Send the request body uncompressed.")
            ex.body = await self._read(ex)
            ex.bytes_in = len(ex.body)
            if route.body == "json":
                ex.json = parse_json_object(ex.body, route.model_fields)
                ex.stream = ex.json.get("stream") is True
                ex.model = self._model_of(ex.json, route.model_fields)
        path_model = ex.params.get("model") if ex.params else None
        if path_model is not None:
            ex.model = path_model
        allowed = ex.key.models if ex.key is not None else None
        if allowed is not None and ex.query:
            # Some servers (llama.cpp in router mode) also take the model from the query string.
            for name, value in parse_qsl(ex.query, keep_blank_values=True):
                if name.lower() == "model" and value not in allowed:
                    raise Forbidden("model_not_allowed", "This key may not use the requested model.")
        if allowed is not None and (route.model_fields or path_model is not None):
            if ex.model is None:
                raise BadRequest("model_required", "This key is limited to some models: name the model.")
            if ex.model not in allowed:
                raise Forbidden("model_not_allowed", "This key may not use the requested model.")

    @staticmethod
    def _model_of(doc: dict[str, Any], fields: tuple[str, ...]) -> str | None:
        values = [doc[f] for f in fields if f in doc]
        if any(not isinstance(value, str) for value in values):
            raise BadRequest("invalid_model", "The model field must be a string.")
        names = set(values)
        if len(names) > 1:
            raise BadRequest("ambiguous_model", "The request body names two different models.")
        return names.pop() if names else None
