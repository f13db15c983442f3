"""Route allowlists, one per upstream kind. A route not listed here is denied.

Classes: `inference` (compute, open to normal keys), `models` (read-only model listing), `info` (read-only
status), `admin` (changes the server or reveals other users' data: only keys with the `admin` scope).
Bodies: `json` is parsed and checked (model scope, duplicates) before forwarding; `raw` is forwarded as bytes;
`none` refuses a body. Patterns: `{name}` matches one path segment, `{name...}` the rest of the path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from aiperimeter.config import Kind

RouteClass = Literal["inference", "models", "info", "admin"]
Body = Literal["json", "raw", "none"]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    cls: RouteClass
    body: Body = "none"
    model_fields: tuple[str, ...] = ()  # body fields that name a model (Ollama still accepts the legacy `name`)

    @property
    def admin(self) -> bool:
        return self.cls == "admin"


def _inference(*paths: str) -> list[Route]:
    return [Route("POST", p, "inference", "json", ("model",)) for p in paths]


def _admin_json(*paths: str) -> list[Route]:
    return [Route("POST", p, "admin", "json") for p in paths]


def _get(cls: RouteClass, *paths: str) -> list[Route]:
    return [Route("GET", p, cls) for p in paths]


_OPENAI_CORE = [
    *_inference("/v1/chat/completions", "/v1/completions", "/v1/embeddings"),
    *_get("models", "/v1/models", "/v1/models/{model...}"),
]

ROUTES: dict[Kind, list[Route]] = {
    "openai": [
        *_OPENAI_CORE,
        *_inference("/v1/responses", "/v1/moderations"),
    ],
    "vllm": [
        *_OPENAI_CORE,
        *_inference(
            "/v1/responses",
            "/v1/score",
            "/score",
            "/v1/rerank",
            "/v2/rerank",
            "/rerank",
            "/pooling",
            "/classify",
            "/tokenize",
            "/detokenize",
            "/v1/messages",
        ),
        *_get("info", "/health", "/version", "/ping"),
        # Open even when vLLM runs with --api-key, so only the admin scope may reach them.
        Route("POST", "/invocations", "admin", "json", ("model",)),
        *_admin_json(
            "/pause",
            "/resume",
            "/update_weights",
            "/scale_elastic_ep",
            "/is_scaling_elastic_ep",
            "/v1/load_lora_adapter",
            "/v1/unload_lora_adapter",
            # VLLM_SERVER_DEV_MODE=1 routes
            "/collective_rpc",
            "/sleep",
            "/wake_up",
            "/reset_prefix_cache",
            "/reset_mm_cache",
            "/start_profile",
            "/stop_profile",
        ),
        *_get("admin", "/is_paused", "/is_sleeping", "/server_info", "/metrics"),
    ],
    "llamacpp": [
        *_OPENAI_CORE,
        *_inference(
            "/completion",
            "/completions",
            "/chat/completions",
            "/embedding",
            "/embeddings",
            "/infill",
            "/rerank",
            "/reranking",
            "/v1/rerank",
            "/v1/reranking",
            "/tokenize",
            "/detokenize",
            "/apply-template",
            "/v1/messages",
            "/v1/messages/count_tokens",
        ),
        *_get("models", "/models"),
        *_get("info", "/health", "/v1/health", "/props"),
        # /slots shows other users' prompts; POST /props and slot save/restore change the server.
        *_get("admin", "/slots", "/metrics", "/lora-adapters"),
        *_admin_json("/props", "/slots/{id}", "/lora-adapters", "/models/load", "/models/unload"),
    ],
    "ollama": [
        *_inference("/api/generate", "/api/chat", "/api/embed", "/api/embeddings"),
        *_inference("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages"),
        Route("POST", "/api/show", "models", "json", ("model", "name")),
        *_get("models", "/api/tags", "/api/ps", "/v1/models", "/v1/models/{model...}"),
        *_get("info", "/", "/api/version"),
        Route("HEAD", "/", "info"),
        Route("POST", "/api/pull", "admin", "json", ("model", "name")),
        Route("POST", "/api/push", "admin", "json", ("model", "name")),
        Route("POST", "/api/create", "admin", "json", ("model", "name")),
        Route("POST", "/api/copy", "admin", "json"),
        Route("DELETE", "/api/delete", "admin", "json", ("model", "name")),
        Route("POST", "/api/blobs/{digest}", "admin", "raw"),
        Route("HEAD", "/api/blobs/{digest}", "admin"),
    ],
    "anthropic": [
        *_inference("/v1/messages", "/v1/messages/count_tokens", "/v1/complete"),
        *_get("models", "/v1/models", "/v1/models/{model...}"),
    ],
}


_PARAM = re.compile(r"\{(\w+)(\.\.\.)?\}")


def _compile(path: str) -> re.Pattern[str]:
    out, last = [], 0
    for match in _PARAM.finditer(path):
        out.append(re.escape(path[last : match.start()]))
        out.append(f"(?P<{match.group(1)}>{'[^/].*' if match.group(2) else '[^/]+'})")
        last = match.end()
    out.append(re.escape(path[last:]))
    return re.compile("".join(out))


class RouteTable:
    """Exact routes in a dict (one lookup on the hot path); patterned routes tried in order after."""

    def __init__(self, routes: list[Route]) -> None:
        self.exact: dict[tuple[str, str], Route] = {}
        self.patterns: list[tuple[str, re.Pattern[str], Route]] = []
        for route in routes:
            if "{" in route.path:
                self.patterns.append((route.method, _compile(route.path), route))
            else:
                self.exact[(route.method, route.path)] = route

    def match(self, method: str, path: str) -> tuple[Route, Mapping[str, str] | None] | None:
        route = self.exact.get((method, path))
        if route is not None:
            return route, None
        for route_method, pattern, route in self.patterns:
            if route_method == method:
                found = pattern.fullmatch(path)
                if found:
                    return route, found.groupdict()
        return None

    @classmethod
    def for_kind(cls, kind: Kind) -> RouteTable:
        return cls(ROUTES[kind])
