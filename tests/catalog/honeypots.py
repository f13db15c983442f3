"""Servers that answer everything: a fingerprint that matches one of these is not specific."""

from __future__ import annotations

import orjson

from aiperimeter.catalog.match import Reply
from aiperimeter.catalog.replay import Answer
from aiperimeter.catalog.schema import Probe

LOGIN = (
    b"<!DOCTYPE html><html><head><title>Sign in</title></head><body><form method=post action=/login>"
    b"<input name=username><input type=password name=password><button>Sign in</button></form></body></html>"
)
NGINX = b"<html><head><title>Welcome to nginx!</title></head><body><h1>Welcome to nginx!</h1></body></html>"
GENERIC_MODELS = orjson.dumps(
    {"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model", "created": 1, "owned_by": "openai"}]}
)


def echo(probe: Probe) -> Reply:
    request = f"{probe.method} {probe.path} HTTP/1.1\r\nHost: target\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in probe.headers.items()
    )
    return Reply(200, {"content-type": "text/plain"}, request.encode())


def catch_all(status: int, content_type: str, body: bytes) -> Answer:
    return lambda probe: Reply(status, {"content-type": content_type}, body)


def generic_openai(probe: Probe) -> Reply:
    if probe.path in ("/v1/models", "/models"):
        return Reply(200, {"content-type": "application/json"}, GENERIC_MODELS)
    return Reply(404, {"content-type": "application/json"}, b'{"detail":"Not Found"}')


HONEYPOTS: dict[str, Answer] = {
    "echo": echo,
    "catch-all-200-text": catch_all(200, "text/plain", b"OK"),
    "catch-all-200-json": catch_all(200, "application/json", b"{}"),
    "catch-all-200-html": catch_all(200, "text/html", b"<html><body>It works!</body></html>"),
    "login-page": catch_all(200, "text/html", LOGIN),
    "nginx-default": catch_all(200, "text/html", NGINX),
    "401-everywhere": catch_all(401, "application/json", b'{"error":"unauthorized"}'),
    "403-everywhere": catch_all(403, "text/html", b"<h1>403 Forbidden</h1>"),
    "404-everywhere": catch_all(404, "text/plain", b"404 page not found"),
    "generic-openai": generic_openai,
}
