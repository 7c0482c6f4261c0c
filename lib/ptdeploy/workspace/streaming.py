"""Streamed answers: a worker's text deltas as server-sent events, as Databricks sends them.

Databricks' chat and completions endpoints stream when the request says ``stream: true``
("Chat and completion endpoints support streaming responses", Foundation model REST API
reference, https://docs.databricks.com/machine-learning/foundation-model-apis/api-reference.html):
the answer is ``text/event-stream``, one ``data: <JSON chunk>`` event per piece of text,
then ``data: [DONE]`` — the protocol OpenAI's clients read, so ``openai`` with
``stream=True`` and ``requests`` with ``stream=True`` work unchanged.

The chunks (``schemas.completion_chunk`` / ``schemas.chat_chunk``):

- every chunk carries the same ``id`` and ``created`` and the ``model``;
- chat: a choice's first chunk has ``delta: {"role": "assistant", "content": ...}``,
  later ones ``{"content": ...}``; completions: ``text``;
- when the answer is complete, one chunk per choice with its ``finish_reason`` (and an
  empty delta or text);
- with ``stream_options: {"include_usage": true}``, a last chunk with no choices and the
  ``usage`` of the whole request (OpenAI's convention);
- a failure after the stream started cannot change the HTTP status any more: it arrives
  as an event ``data: {"error_code": ..., "message": ...}`` (Databricks' error shape),
  and the stream ends without ``[DONE]``.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from ptdeploy.llm_tasks import TASK_CHAT
from ptdeploy.workspace.schemas import Usage, chat_chunk, completion_chunk

log = logging.getLogger("ptdeploy.workspace.server")

DONE = b"data: [DONE]\n\n"


def event(data: dict[str, Any]) -> bytes:
    """One server-sent event."""
    return b"data: " + json.dumps(data, separators=(",", ":")).encode("utf-8") + b"\n\n"


async def sse(
    events: AsyncIterator[tuple[int, str] | dict[str, Any]],
    *,
    task: str,
    model: str,
    include_usage: bool,
    first: tuple[int, str] | dict[str, Any] | None = None,
) -> AsyncIterator[bytes]:
    """Turn a worker's stream (deltas, then the whole response) into SSE bytes.

    ``first`` is an item already taken from ``events`` (the server awaits it before it
    answers, so a request refused by validation still gets its HTTP 400).
    """
    chat = task == TASK_CHAT
    response_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    started: set[int] = set()

    def chunk(choices: list[tuple[int, Any, str | None]], usage: Usage | None = None) -> bytes:
        build = chat_chunk if chat else completion_chunk
        return event(build(response_id, created, model, choices, usage))

    def content(index: int, text: str) -> Any:
        if not chat:
            return text
        if index in started:
            return {"content": text}
        started.add(index)
        return {"role": "assistant", "content": text}

    async def items() -> AsyncIterator[tuple[int, str] | dict[str, Any]]:
        if first is not None:
            yield first
        async for item in events:
            yield item

    try:
        async for item in items():
            if isinstance(item, tuple):
                index, text = item
                yield chunk([(index, content(index, text), None)])
                continue
            for choice in item.get("choices", []):
                index = int(choice.get("index", 0))
                # a choice that produced no text still opens with its role
                body: Any = content(index, "") if chat and index not in started else {}
                yield chunk([(index, body if chat else "", choice.get("finish_reason"))])
            if include_usage and isinstance(item.get("usage"), dict):
                u = item["usage"]
                usage = Usage(int(u.get("prompt_tokens", 0)), u.get("completion_tokens"))
                yield chunk([], usage)
        yield DONE
    except Exception as exc:  # after the headers went out: report it in the stream
        log.exception("streamed inference failed for %s", model)
        code = getattr(exc, "error_code", None) or "INTERNAL_ERROR"
        yield event({"error_code": code, "message": f"Inference failed: {exc}"})
