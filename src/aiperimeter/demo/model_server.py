"""A tiny OpenAI- and Ollama-compatible model server with canned answers and real streaming.

For demos and trying the gateway without a GPU: `python -m aiperimeter.demo.model_server --port 11500`.
It answers like the products it imitates (including their lack of authentication), and nothing more.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from typing import Any

import orjson
from aiohttp import web

MODELS = ("demo-llama:8b", "demo-coder:1b")
ANSWER = "The perimeter is closed: this answer came through the aiperimeter gateway."
TOKEN_DELAY = 0.02


def _words() -> list[str]:
    words = ANSWER.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        doc = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise web.HTTPBadRequest(text='{"error":"invalid JSON"}', content_type="application/json") from None
    if not isinstance(doc, dict):
        raise web.HTTPBadRequest(text='{"error":"expected an object"}', content_type="application/json")
    return doc


def _prompt_tokens(doc: dict[str, Any]) -> int:
    text = orjson.dumps(doc.get("messages") or doc.get("prompt") or "")
    return max(1, len(text) // 4)


async def ollama_root(request: web.Request) -> web.Response:
    return web.Response(text="Ollama is running")


async def ollama_version(request: web.Request) -> web.Response:
    return web.json_response({"version": "0.0.0-demo"})


async def ollama_tags(request: web.Request) -> web.Response:
    models = [
        {
            "name": m,
            "model": m,
            "modified_at": "2026-01-01T00:00:00Z",
            "size": 1,
            "digest": "0" * 64,
            "details": {"family": "demo", "parameter_size": m.split(":")[1]},
        }
        for m in MODELS
    ]
    return web.json_response({"models": models})


async def ollama_chat(request: web.Request) -> web.StreamResponse:
    doc = await _json(request)
    model = str(doc.get("model", MODELS[0]))
    chat = request.path == "/api/chat"
    prompt_tokens = _prompt_tokens(doc)

    def piece(text: str, done: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"model": model, "created_at": "2026-01-01T00:00:00Z", "done": done}
        if chat:
            out["message"] = {"role": "assistant", "content": text}
        else:
            out["response"] = text
        if done:
            out.update(done_reason="stop", prompt_eval_count=prompt_tokens, eval_count=len(_words()))
        return out

    if doc.get("stream") is False:
        return web.json_response(piece(ANSWER, True))
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    for word in _words():
        await response.write(orjson.dumps(piece(word, False)) + b"\n")
        await asyncio.sleep(TOKEN_DELAY)
    await response.write(orjson.dumps(piece("", True)) + b"\n")
    await response.write_eof()
    return response


async def ollama_pull(request: web.Request) -> web.Response:
    await _json(request)
    return web.json_response({"status": "success"})


async def openai_models(request: web.Request) -> web.Response:
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "library"} for m in MODELS]
    return web.json_response({"object": "list", "data": data})


async def openai_chat(request: web.Request) -> web.StreamResponse:
    doc = await _json(request)
    model = str(doc.get("model", MODELS[0]))
    usage = {"prompt_tokens": _prompt_tokens(doc), "completion_tokens": len(_words())}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    base = {"id": "chatcmpl-demo", "created": int(time.time()), "model": model}
    if not doc.get("stream"):
        message = {"role": "assistant", "content": ANSWER}
        return web.json_response(
            {
                **base,
                "object": "chat.completion",
                "usage": usage,
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            }
        )
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    for word in _words():
        chunk = {
            **base,
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}],
        }
        await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        await asyncio.sleep(TOKEN_DELAY)
    final = {
        **base,
        "object": "chat.completion.chunk",
        "usage": usage,
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
    }
    await response.write(b"data: " + orjson.dumps(final) + b"\n\ndata: [DONE]\n\n")
    await response.write_eof()
    return response


async def openai_embeddings(request: web.Request) -> web.Response:
    doc = await _json(request)
    return web.json_response(
        {
            "object": "list",
            "model": doc.get("model"),
            "data": [{"object": "embedding", "index": 0, "embedding": [0.0, 0.5, 1.0]}],
            "usage": {"prompt_tokens": _prompt_tokens(doc), "total_tokens": _prompt_tokens(doc)},
        }
    )


def build_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/", ollama_root)
    app.router.add_get("/api/version", ollama_version)
    app.router.add_get("/api/tags", ollama_tags)
    app.router.add_post("/api/chat", ollama_chat)
    app.router.add_post("/api/generate", ollama_chat)
    app.router.add_post("/api/pull", ollama_pull)
    app.router.add_get("/v1/models", openai_models)
    app.router.add_post("/v1/chat/completions", openai_chat)
    app.router.add_post("/v1/embeddings", openai_embeddings)
    return app


async def start(host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(build_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    assert server is not None and server.sockets  # type: ignore[attr-defined]
    return runner, int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11500)
    args = parser.parse_args()

    async def serve() -> None:
        runner, port = await start(args.host, args.port)
        print(f"demo model server listening on http://{args.host}:{port}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
