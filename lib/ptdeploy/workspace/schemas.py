"""Requests and responses of the ``llm/v1`` serving API, as Databricks and OpenAI define them.

Request models follow the Databricks Foundation Model REST API (which provisioned
throughput endpoints share) plus the fields the OpenAI client sends on its own:

- completions: ``prompt`` (string or list of strings), ``max_tokens``, ``temperature``,
  ``top_p``, ``top_k``, ``stop``, ``n``, ``logprobs`` (OpenAI's legacy integer: how many
  alternatives per token, 0-5), ``echo``, ``suffix``, ``use_raw_prompt``,
  ``error_behavior``;
- chat: ``messages`` (``{role: system|user|assistant, content}``), ``max_tokens``,
  ``temperature``, ``top_p``, ``top_k``, ``stop``, ``n``, ``logprobs`` (bool),
  ``top_logprobs`` (0-20, only with ``logprobs=true``);
- embeddings: ``input`` (string or list of strings), ``instruction`` (prepended to every
  input, as BGE query instructions are), ``encoding_format`` (``float``/``base64``: the
  OpenAI client asks for base64 unless told otherwise), ``dimensions``.

Every task also accepts ``model`` (the OpenAI routes carry the endpoint name there) and
``user``. Completions and chat accept ``stream`` (server-sent events, see
``completion_chunk``/``chat_chunk``) and ``stream_options: {"include_usage": bool}`` with
it; embeddings answer in one response (``stream`` only ``false``).

Unknown fields are refused, not ignored: Databricks answers ``400 Bad request: json:
unknown field "inputs"`` for them (databricks-sdk-py issue #1263), and a misspelled
``max_token`` silently ignored would generate 256 tokens the user did not ask for.
Known fields the local engine cannot honour (``tools``, ``response_format`` other than
text, ``stream=true`` for embeddings) are refused with a message that says so. Types are strict, as Go's
JSON decoding on Databricks is: ``"max_tokens": "10"`` is an error, not 10.

Defaults (Databricks'): ``temperature`` 1.0 (sampling; send 0 for greedy, deterministic
output), ``top_p`` 1.0, ``n`` 1. ``max_tokens`` has no limit on Databricks (the context
length); the local CPU engine defaults to ``DEFAULT_MAX_TOKENS`` (256), clamped to the
context, so a forgotten ``max_tokens`` does not tie a CPU worker up for minutes.
"""

from __future__ import annotations

import base64
import struct
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from ptdeploy.errors import InvalidRequestError
from ptdeploy.limits import MAX_EMBEDDING_INPUTS, MAX_N, MAX_PROMPTS, MAX_TOP_LOGPROBS
from ptdeploy.llm_tasks import TASK_CHAT, TASK_COMPLETIONS, TASK_EMBEDDINGS, TASKS

DEFAULT_MAX_TOKENS = 256
MAX_COMPLETION_LOGPROBS = 5  # OpenAI's bound for the legacy completions API
ROLES = ("system", "user", "assistant")


# ----------------------------------------------------------------- request models

_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)


def _text_list(value: Any, name: str, *, allow_empty_strings: bool, most: int) -> Any:
    """Check ``str | list[str]`` with a message that names the field (before pydantic);
    a list has at most ``most`` items (``ptdeploy.limits``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        if not value:
            raise ValueError(
                f"{name} is an empty list; give a string or a non-empty list of strings"
            )
        if len(value) > most:
            raise ValueError(
                f"{name} has {len(value)} items; a request takes at most {most}: split them "
                "over several requests"
            )
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise ValueError(
                    f"{name}[{i}] is {_describe(item)}; every item of {name} must be a string"
                )
            if not allow_empty_strings and not item:
                raise ValueError(f"{name}[{i}] is an empty string")
        return value
    raise ValueError(f"{name} is {_describe(value)}; it must be a string or a list of strings")


def _stop_list(value: Any) -> tuple[str, ...]:
    """``stop``: a string or a list of strings; empty strings mean "no stop" (Databricks' default "")."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise ValueError(f"stop[{i}] is {_describe(item)}; stop sequences must be strings")
        return tuple(s for s in value if s)
    raise ValueError(f"stop is {_describe(value)}; it must be a string or a list of strings")


class _Common(BaseModel):
    model_config = _STRICT

    model: str | None = None  # the endpoint name on OpenAI routes; not used to route here
    user: str | None = None
    stream: bool = False


class StreamOptions(BaseModel):
    """OpenAI's ``stream_options``: ``include_usage`` adds a last chunk with the usage."""

    model_config = _STRICT

    include_usage: bool = False


class _Generation(_Common):
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=1)
    n: int = Field(default=1, ge=1, le=MAX_N)
    stop: tuple[str, ...] = ()
    stream_options: StreamOptions | None = None

    @field_validator("stream_options")
    @classmethod
    def _stream_options_need_stream(
        cls, value: StreamOptions | None, info: ValidationInfo
    ) -> StreamOptions | None:
        if value is not None and not info.data.get("stream"):
            raise ValueError(
                "stream_options is only allowed with stream=true; send stream=true or leave "
                "stream_options out"
            )
        return value

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, value: Any) -> tuple[str, ...]:
        return _stop_list(value)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class CompletionRequest(_Generation):
    """``llm/v1/completions``."""

    prompt: str | list[str]
    logprobs: int | None = Field(default=None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    echo: bool = False
    suffix: str | None = None
    use_raw_prompt: bool = False  # prompts are always raw here: no template is applied
    error_behavior: Literal["error", "truncate"] = "error"

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, value: Any) -> Any:
        return _text_list(value, "prompt", allow_empty_strings=True, most=MAX_PROMPTS)

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class TextPart(BaseModel):
    model_config = _STRICT
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = _STRICT

    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _content(cls, value: Any) -> Any:
        if isinstance(value, list):
            for i, part in enumerate(value):
                if not isinstance(part, dict) or part.get("type") != "text":
                    kind = part.get("type") if isinstance(part, dict) else _describe(part)
                    raise ValueError(
                        f"content[{i}] is a {kind!r} part; the local engine serves text only: "
                        "give content as a string or a list of {'type': 'text', 'text': ...} parts"
                    )
        return value

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatRequest(_Generation):
    """``llm/v1/chat``."""

    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    # Known to Databricks' chat API: accepted when they ask for nothing the engine lacks.
    tools: list[Any] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None
    reasoning_effort: str | None = None  # a hint for reasoning models; nothing to do here

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, value: list[Any] | None) -> list[Any] | None:
        if value:
            raise ValueError("tool calling is not supported by the local engine; leave tools out")
        return value

    @field_validator("tool_choice")
    @classmethod
    def _no_tool_choice(cls, value: Any) -> Any:
        if value not in (None, "none", "auto"):
            raise ValueError(
                "tool calling is not supported by the local engine; leave tool_choice out "
                "(or 'none')"
            )
        return value

    @field_validator("response_format")
    @classmethod
    def _text_format(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and value.get("type") != "text":
            raise ValueError(
                f"response_format type {value.get('type')!r} is not supported by the local "
                "engine (no constrained decoding); use {'type': 'text'} or leave it out"
            )
        return value

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs_needs_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and not info.data.get("logprobs"):
            raise ValueError(
                f"top_logprobs={value} needs logprobs=true; set logprobs to true "
                "or leave top_logprobs out"
            )
        return value


class EmbeddingRequest(_Common):
    """``llm/v1/embeddings``."""

    input: str | list[str]
    instruction: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)

    @field_validator("stream")
    @classmethod
    def _no_stream(cls, value: bool) -> bool:
        if value:
            raise ValueError(
                "stream=true is not valid for embeddings: the vectors come in one response; "
                "send stream=false or leave it out"
            )
        return value

    @field_validator("input", mode="before")
    @classmethod
    def _input(cls, value: Any) -> Any:
        return _text_list(value, "input", allow_empty_strings=True, most=MAX_EMBEDDING_INPUTS)

    @property
    def inputs(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


Request = CompletionRequest | ChatRequest | EmbeddingRequest
REQUEST_MODELS: dict[str, type[BaseModel]] = {
    TASK_COMPLETIONS: CompletionRequest,
    TASK_CHAT: ChatRequest,
    TASK_EMBEDDINGS: EmbeddingRequest,
}

# What each field must be, for error messages (by the last name in the error's path).
FIELD_HELP: dict[str, str] = {
    "prompt": "a string or a non-empty list of strings",
    "input": "a string or a non-empty list of strings",
    "messages": "a non-empty list of {'role': ..., 'content': ...} objects",
    "messages[]": "an object {'role': ..., 'content': ...}",
    "prompt[]": "a string",
    "input[]": "a string",
    "stop[]": "a string",
    "content[]": "a {'type': 'text', 'text': ...} object",
    "role": "one of 'system', 'user', 'assistant'",
    "content": "a string (or a list of {'type': 'text', 'text': ...} parts)",
    "name": "a string",
    "text": "a string",
    "type": "'text'",
    "max_tokens": "an integer >= 1",
    "temperature": "a number between 0.0 and 2.0 (0 = greedy)",
    "top_p": "a number greater than 0.0 and at most 1.0",
    "top_k": "an integer >= 1",
    "n": f"an integer between 1 and {MAX_N}",
    "stop": "a string or a list of strings",
    "top_logprobs": f"an integer between 0 and {MAX_TOP_LOGPROBS} (with logprobs=true)",
    "echo": "true or false",
    "suffix": "a string",
    "use_raw_prompt": "true or false",
    "error_behavior": "'error' or 'truncate'",
    "instruction": "a string",
    "encoding_format": "'float' or 'base64'",
    "dimensions": "an integer >= 1 (the model's embedding size)",
    "model": "a string (the endpoint name)",
    "user": "a string",
    "stream": "true or false (embeddings: false)",
    "stream_options": "{'include_usage': true or false}, with stream=true",
    "include_usage": "true or false",
    "tools": "absent (tool calling is not supported locally)",
    "tool_choice": "absent or 'none'",
    "response_format": "absent or {'type': 'text'}",
    "reasoning_effort": "a string",
}
_LOGPROBS_HELP = {
    TASK_CHAT: "true or false",
    TASK_COMPLETIONS: f"an integer between 0 and {MAX_COMPLETION_LOGPROBS}",
}


def _describe(value: Any) -> str:
    """A short, safe rendering of a given value for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        kind = "an object" if isinstance(value, dict) else "a list"
        text = repr(value)
        return f"{kind} {text if len(text) <= 60 else text[:57] + '...'}"
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:57] + "..."
        return f"the string {text!r}"
    return repr(value)


def _path(loc: Sequence[Any], model: type[BaseModel]) -> tuple[str, str]:
    """(``messages[0].role``, ``role``) from a pydantic error location.

    Union members appear in locations as type names (``str``, ``list[TextPart]``): they
    are not fields and are dropped.
    """
    parts: list[str] = []
    last = ""
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif isinstance(item, str) and item.isidentifier() and item not in ("str", "list"):
            parts.append(("." if parts else "") + item)
            last = item
    return "".join(parts) or "body", last


def _fields_of(model: type[BaseModel]) -> list[str]:
    return sorted(model.model_fields)


def parse_request(task: str, body: Any) -> Request:
    """Validate a request body for ``task``; raise ``InvalidRequestError`` naming the field."""
    if task not in REQUEST_MODELS:
        raise InvalidRequestError(
            "task", f"Unknown task {task!r}; the local engine serves {', '.join(TASKS)}."
        )
    model = REQUEST_MODELS[task]
    required = [n for n, f in model.model_fields.items() if f.is_required()]
    if not isinstance(body, dict):
        raise InvalidRequestError(
            "body",
            f"The request body must be a JSON object for a {task} endpoint (with "
            f"{', '.join(repr(r) for r in required)}); got {_describe(body)}.",
            "BAD_REQUEST",
        )
    try:
        return model.model_validate(body)  # type: ignore[return-value]
    except ValidationError as exc:
        raise _translate(task, model, body, exc) from None


def _translate(
    task: str, model: type[BaseModel], body: dict[str, Any], exc: ValidationError
) -> InvalidRequestError:
    errors = exc.errors(include_url=False)
    # Prefer an unknown field (a misspelling explains the rest), then a custom message,
    # then the first error in the body's order.
    error = next(
        (e for e in errors if e["type"] == "extra_forbidden"),
        next((e for e in errors if e["type"] == "value_error"), errors[0]),
    )
    path, name = _path(error["loc"], model)
    if error["loc"] and isinstance(error["loc"][-1], int):  # an item of a list
        name = f"{name}[]"
    etype = error["type"]
    given = error.get("input")
    if etype == "extra_forbidden":
        owner = "message" if path.startswith("messages") else f"{task} request"
        valid = _fields_of(ChatMessage) if path.startswith("messages[") else _fields_of(model)
        return InvalidRequestError(
            path,
            f'Bad request: json: unknown field "{name}" in the {owner}. Valid fields: '
            f"{', '.join(valid)}.",
            "BAD_REQUEST",
        )
    if etype == "missing":
        help_ = FIELD_HELP.get(name, "required")
        return InvalidRequestError(
            path, f"Missing required field {path!r} for a {task} request: {path} must be {help_}."
        )
    if etype == "value_error":
        reason = str(error.get("ctx", {}).get("error", error["msg"]))
        return InvalidRequestError(path, f"Invalid {path}: {reason}.")
    if name == "messages" and etype == "too_short":
        return InvalidRequestError(
            path, f"Invalid messages: the list is empty; messages must be {FIELD_HELP['messages']}."
        )
    help_ = _LOGPROBS_HELP.get(task, "") if name == "logprobs" else FIELD_HELP.get(name, "")
    what = f"; {path} must be {help_}" if help_ else f" ({error['msg']})"
    return InvalidRequestError(path, f"Invalid {path}: {_describe(given)}{what}.")


# --------------------------------------------------------------- response builders


@dataclass(frozen=True)
class Usage:
    """Token counts of one response (``completion_tokens`` is None for embeddings)."""

    prompt_tokens: int
    completion_tokens: int | None = None

    def as_dict(self) -> dict[str, int]:
        out = {"prompt_tokens": self.prompt_tokens}
        if self.completion_tokens is not None:
            out["completion_tokens"] = self.completion_tokens
        out["total_tokens"] = self.prompt_tokens + (self.completion_tokens or 0)
        return out


@dataclass(frozen=True)
class TopLogprob:
    token: str
    logprob: float
    bytes: tuple[int, ...] = ()


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token, its log-probability and the most likely alternatives.

    ``token`` is the token's text, or ``bytes:\\xe2\\x80`` (OpenAI's notation) when it is
    not valid UTF-8 on its own; ``bytes`` are its exact bytes.
    """

    token: str
    logprob: float
    bytes: tuple[int, ...] = ()
    top: tuple[TopLogprob, ...] = ()
    text_offset: int = 0  # where the token starts in the choice's text


@dataclass(frozen=True)
class Choice:
    text: str
    finish_reason: Literal["stop", "length"]
    logprobs: tuple[TokenLogprob, ...] | None = None
    completion_tokens: int = 0


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def completion_response(
    choices: Sequence[Choice],
    usage: Usage,
    *,
    model: str,
    with_logprobs: bool = False,
    created: int | None = None,
    response_id: str | None = None,
) -> dict[str, Any]:
    """OpenAI ``text_completion`` object (legacy logprobs: tokens, token_logprobs, top_logprobs)."""
    out_choices = []
    for index, choice in enumerate(choices):
        logprobs = None
        if with_logprobs and choice.logprobs is not None:
            logprobs = {
                "tokens": [t.token for t in choice.logprobs],
                "token_logprobs": [t.logprob for t in choice.logprobs],
                "top_logprobs": [{a.token: a.logprob for a in t.top} for t in choice.logprobs],
                "text_offset": [t.text_offset for t in choice.logprobs],
            }
        out_choices.append(
            {
                "index": index,
                "text": choice.text,
                "logprobs": logprobs,
                "finish_reason": choice.finish_reason,
            }
        )
    return {
        "id": response_id or _new_id("cmpl"),
        "object": "text_completion",
        "created": int(time.time()) if created is None else created,
        "model": model,
        "choices": out_choices,
        "usage": usage.as_dict(),
    }


def chat_response(
    choices: Sequence[Choice],
    usage: Usage,
    *,
    model: str,
    with_logprobs: bool = False,
    created: int | None = None,
    response_id: str | None = None,
) -> dict[str, Any]:
    """OpenAI ``chat.completion`` object (logprobs: ``{content: [{token, logprob, bytes, top_logprobs}]}``)."""
    out_choices = []
    for index, choice in enumerate(choices):
        logprobs = None
        if with_logprobs and choice.logprobs is not None:
            logprobs = {
                "content": [
                    {
                        "token": t.token,
                        "logprob": t.logprob,
                        "bytes": list(t.bytes),
                        "top_logprobs": [
                            {"token": a.token, "logprob": a.logprob, "bytes": list(a.bytes)}
                            for a in t.top
                        ],
                    }
                    for t in choice.logprobs
                ]
            }
        out_choices.append(
            {
                "index": index,
                "message": {"role": "assistant", "content": choice.text},
                "logprobs": logprobs,
                "finish_reason": choice.finish_reason,
            }
        )
    return {
        "id": response_id or _new_id("chatcmpl"),
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": model,
        "choices": out_choices,
        "usage": usage.as_dict(),
    }


def completion_chunk(
    response_id: str,
    created: int,
    model: str,
    choices: Sequence[tuple[int, str, str | None]],
    usage: Usage | None = None,
) -> dict[str, Any]:
    """A streamed ``text_completion`` chunk: ``(index, text, finish_reason)`` per choice.

    The shape OpenAI's completions stream uses (Databricks' completions endpoints stream
    the same objects): every chunk carries the id and creation time of the whole answer;
    the last content chunk of a choice has its ``finish_reason``; with
    ``stream_options.include_usage`` a final chunk has no choices and the ``usage``.
    """
    return {
        "id": response_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": i, "text": text, "logprobs": None, "finish_reason": finish}
            for i, text, finish in choices
        ],
        **({"usage": usage.as_dict()} if usage is not None else {}),
    }


def chat_chunk(
    response_id: str,
    created: int,
    model: str,
    choices: Sequence[tuple[int, dict[str, Any], str | None]],
    usage: Usage | None = None,
) -> dict[str, Any]:
    """A streamed ``chat.completion.chunk``: ``(index, delta, finish_reason)`` per choice.

    ``delta`` is ``{"role": "assistant", "content": ""}`` in a choice's first chunk,
    ``{"content": text}`` after, ``{}`` in the chunk that carries ``finish_reason``
    (Databricks Foundation Model REST API reference: chat responses stream
    ``ChatCompletionChunk`` objects whose choices hold a ``delta`` message).
    """
    return {
        "id": response_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [
            {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}
            for i, delta, finish in choices
        ],
        **({"usage": usage.as_dict()} if usage is not None else {}),
    }


def encode_embedding(vector: Sequence[float], encoding_format: str) -> list[float] | str:
    """A vector as a JSON list, or as OpenAI's base64 of little-endian float32."""
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return [float(x) for x in vector]


def embedding_response(
    vectors: Sequence[Sequence[float]],
    usage: Usage,
    *,
    model: str,
    encoding_format: str = "float",
    response_id: str | None = None,
) -> dict[str, Any]:
    """OpenAI ``list`` of ``embedding`` objects; usage has no completion_tokens (as Databricks)."""
    return {
        "id": response_id or _new_id("emb"),
        "object": "list",
        "model": model,
        "data": [
            {"object": "embedding", "index": i, "embedding": encode_embedding(v, encoding_format)}
            for i, v in enumerate(vectors)
        ],
        "usage": usage.as_dict(),
    }
