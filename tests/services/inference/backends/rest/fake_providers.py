"""Small real HTTP servers that speak the Anthropic Messages and Ollama native wire formats
(/api/chat, /api/generate, and /api/tags, /api/ps and /api/version for discovery), with the
shapes those APIs document. They echo the last user message, so tests can tell what arrived."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

SECRET = "sk-test-secret-123"


def _last_text(messages: list[dict[str, Any]]) -> str:
    content = messages[-1]["content"]
    if isinstance(content, str):
        return content
    return "".join(block.get("text", "") for block in content if block.get("type") == "text")


def anthropic_app(seen: list[dict[str, Any]]) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/messages")
    async def messages(request: Request):  # noqa: ANN202
        body = await request.json()
        seen.append({"headers": dict(request.headers), "body": body})
        if request.headers.get("x-api-key") != SECRET:
            return JSONResponse(
                {
                    "type": "error",
                    "error": {"type": "authentication_error", "message": f"bad key {request.headers.get('x-api-key')}"},
                },
                status_code=401,
            )
        words = f"claude says {_last_text(body['messages'])}".split(" ")[: body["max_tokens"]]
        stop_reason = "max_tokens" if len(words) == body["max_tokens"] else "end_turn"
        if not body.get("stream"):
            return {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": body["model"],
                "content": [{"type": "text", "text": " ".join(words)}],
                "stop_reason": stop_reason,
                "usage": {"input_tokens": 9, "output_tokens": len(words)},
            }

        def events():  # noqa: ANN202
            def event(kind: str, data: dict[str, Any]) -> str:
                return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n"

            yield event("message_start", {"message": {"id": "msg_1", "usage": {"input_tokens": 9, "output_tokens": 1}}})
            yield event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
            for index, word in enumerate(words):
                text = word if index == 0 else f" {word}"
                yield event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": text}})
            yield event("content_block_stop", {"index": 0})
            yield event(
                "message_delta", {"delta": {"stop_reason": stop_reason}, "usage": {"output_tokens": len(words)}}
            )
            yield event("message_stop", {})

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def ollama_app(seen: list[dict[str, Any]]) -> FastAPI:
    app = FastAPI()

    @app.post("/api/chat")
    async def chat(request: Request):  # noqa: ANN202
        body = await request.json()
        seen.append({"headers": dict(request.headers), "body": body})
        images = sum(len(m.get("images", [])) for m in body["messages"])
        words = f"ollama says {_last_text(body['messages'])} images={images}".split(" ")
        limit = body.get("options", {}).get("num_predict")
        done_reason = "length" if limit and len(words) > limit else "stop"
        words = words[:limit] if limit else words
        if not body.get("stream", True):
            return {
                "model": body["model"],
                "message": {"role": "assistant", "content": " ".join(words)},
                "done": True,
                "done_reason": done_reason,
                "prompt_eval_count": 7,
                "eval_count": len(words),
            }

        def lines():  # noqa: ANN202
            for index, word in enumerate(words):
                text = word if index == 0 else f" {word}"
                yield (
                    json.dumps(
                        {"model": body["model"], "message": {"role": "assistant", "content": text}, "done": False}
                    )
                    + "\n"
                )
            final = {
                "model": body["model"],
                "message": {"role": "assistant", "content": ""},
                "done": True,
                "done_reason": done_reason,
                "prompt_eval_count": 7,
                "eval_count": len(words),
            }
            yield json.dumps(final) + "\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @app.post("/api/generate")
    async def generate(request: Request):  # noqa: ANN202
        body = await request.json()
        seen.append({"headers": dict(request.headers), "body": body})
        words = f"ollama continues {body['prompt']}".split(" ")

        def lines():  # noqa: ANN202
            for index, word in enumerate(words):
                yield json.dumps(
                    {"model": body["model"], "response": word if index == 0 else f" {word}", "done": False}
                )
                yield "\n"
            final = {"model": body["model"], "response": "", "done": True, "done_reason": "stop", "eval_count": 3}
            yield json.dumps(final) + "\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    details = {"format": "gguf", "family": "gemma3", "parameter_size": "268.10M", "quantization_level": "Q4_K_M"}

    @app.get("/api/tags")
    async def tags() -> dict[str, Any]:
        return {
            "models": [
                {"name": name, "model": name, "size": 291554930, "digest": "e7d", "details": details}
                for name in OLLAMA_MODELS
            ]
        }

    @app.get("/api/ps")
    async def running() -> dict[str, Any]:
        name = OLLAMA_MODELS[0]  # the first is loaded
        return {"models": [{"name": name, "model": name, "size": 291554930, "details": details, "size_vram": 0}]}

    @app.get("/api/version")
    async def version() -> dict[str, str]:
        return {"version": "0.12.6"}

    return app


OLLAMA_MODELS = ("gemma3:270m", "qwen3:0.6b")
