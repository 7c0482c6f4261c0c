"""Query provisioned-throughput endpoints: completions, chat, embeddings, typed results.

Arguments are checked before any call (``QueryError`` names the field, the value and
what is valid), and answers come back as dataclasses instead of raw JSON.

Transport. Embeddings go through ``w.serving_endpoints.query(name=..., input=[...])``:
its ``QueryEndpointResponse`` models them fully. Completions and chat go through
``w.api_client.do("POST", "/serving-endpoints/{name}/invocations", body=...)`` — the same
route, headers, auth, retries and error mapping the SDK's ``query`` uses — because
databricks-sdk 0.162's ``query``:

- has no ``logprobs`` / ``top_logprobs`` parameters, so chat log probabilities cannot be
  requested through it;
- drops ``finish_reason``: ``V1ResponseChoiceElement.from_dict`` reads the key
  ``finishReason`` while the endpoints answer ``finish_reason`` (checked: always None);
- types ``logprobs`` as an ``int`` while chat answers an object
  (``{"content": [{"token", "logprob", "top_logprobs": [...]}]}``).

Streaming: ``stream_complete`` and ``stream_chat`` send ``stream=true`` on the same route
(``api_client.do(raw=True)``) and yield ``StreamDelta`` pieces as the endpoint's
server-sent events arrive.

Also here: ``split_reasoning`` for DeepSeek-R1 style ``<think>…</think>`` outputs,
``cosine_similarity_table`` for embeddings, and ``openai_client`` for the OpenAI SDK.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from databricks.sdk.errors import BadRequest, NotFound
from databricks.sdk.service.serving import ChatMessage

from ptdeploy.errors import EndpointNotFoundError, PtdeployError, QueryError
from ptdeploy.limits import MAX_N, MAX_TOP_LOGPROBS
from ptdeploy.names import check_endpoint_name

if TYPE_CHECKING:
    import numpy as np
    import openai
    from databricks.sdk import WorkspaceClient

CHAT_ROLES = ("system", "user", "assistant")
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


# --------------------------------------------------------------------- validation


def _check_max_tokens(max_tokens: Any) -> int:
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise QueryError(
            f"max_tokens={max_tokens!r} is not valid: give an integer >= 1 (the most tokens "
            "to generate)."
        )
    return max_tokens


def _check_temperature(temperature: Any) -> float:
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not 0.0 <= temperature <= 2.0
    ):
        raise QueryError(
            f"temperature={temperature!r} is not valid: give a number between 0.0 (greedy, "
            "deterministic) and 2.0."
        )
    return float(temperature)


def _check_n(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N:
        raise QueryError(f"n={n!r} is not valid: give an integer between 1 and {MAX_N}.")
    return n


def _check_stop(stop: Any) -> list[str] | None:
    if stop is None:
        return None
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, list | tuple) or not items:
        raise QueryError(
            f"stop={stop!r} is not valid: give a string or a non-empty list of strings."
        )
    for i, item in enumerate(items):
        if not isinstance(item, str) or not item:
            raise QueryError(
                f"stop[{i}]={item!r} is not valid: stop sequences are non-empty strings."
            )
    return list(items)


def _check_texts(value: Any, field_name: str) -> list[str]:
    """A string or a non-empty list of non-empty strings, as a list."""
    items = [value] if isinstance(value, str) else value
    if isinstance(items, str | bytes) or not isinstance(items, Sequence) or not items:
        raise QueryError(
            f"{field_name}={value!r} is not valid: give a string or a non-empty list of strings."
        )
    for i, item in enumerate(items):
        if not isinstance(item, str) or not item.strip():
            where = field_name if isinstance(value, str) else f"{field_name}[{i}]"
            raise QueryError(f"{where}={item!r} is empty or not a string: give non-empty text.")
    return list(items)


def _check_messages(messages: Any) -> list[dict[str, str]]:
    if isinstance(messages, str | bytes | Mapping) or not isinstance(messages, Iterable):
        raise QueryError(
            f"messages={messages!r} is not valid: give a list of {{'role': ..., 'content': ...}}."
        )
    out: list[dict[str, str]] = []
    for i, msg in enumerate(messages):
        if isinstance(msg, ChatMessage):
            role = msg.role.value if msg.role is not None else None
            content = msg.content
        elif isinstance(msg, Mapping):
            role, content = msg.get("role"), msg.get("content")
        else:
            raise QueryError(
                f"messages[{i}]={msg!r} is not valid: give a dict with 'role' and 'content' "
                "(or a databricks.sdk ChatMessage)."
            )
        if role not in CHAT_ROLES:
            raise QueryError(
                f"messages[{i}].role={role!r} is not valid: one of {', '.join(CHAT_ROLES)}."
            )
        if not isinstance(content, str):
            raise QueryError(f"messages[{i}].content={content!r} is not valid: give a string.")
        out.append({"role": role, "content": content})
    if not out:
        raise QueryError("messages is empty: give at least one {'role': 'user', 'content': ...}.")
    return out


def _check_logprobs(logprobs: Any, top_logprobs: Any) -> None:
    if not isinstance(logprobs, bool):
        raise QueryError(f"logprobs={logprobs!r} is not valid: give True or False.")
    if top_logprobs is None:
        return
    if (
        isinstance(top_logprobs, bool)
        or not isinstance(top_logprobs, int)
        or not 0 <= top_logprobs <= MAX_TOP_LOGPROBS
    ):
        raise QueryError(
            f"top_logprobs={top_logprobs!r} is not valid: give an integer between 0 and "
            f"{MAX_TOP_LOGPROBS}."
        )
    if not logprobs:
        raise QueryError(
            f"top_logprobs={top_logprobs} needs logprobs=True: the alternatives are only "
            "returned with the sampled tokens' log probabilities."
        )


# ------------------------------------------------------------------------ results


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Usage | None:
        if not d:
            return None
        return cls(d.get("prompt_tokens"), d.get("completion_tokens"), d.get("total_tokens"))


@dataclass(frozen=True)
class Completion:
    """A completions answer: one text per choice (``len(prompts) * n``, in order)."""

    texts: list[str]
    finish_reasons: list[str | None]
    usage: Usage | None = None
    model: str | None = None

    @property
    def text(self) -> str:
        """The first (often only) text."""
        return self.texts[0]


@dataclass(frozen=True)
class TopLogprob:
    token: str
    logprob: float

    @property
    def prob(self) -> float:
        return math.exp(self.logprob)


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token, its log probability and the most likely alternatives."""

    token: str
    logprob: float
    top_logprobs: list[TopLogprob] = field(default_factory=list)

    @property
    def prob(self) -> float:
        return math.exp(self.logprob)


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    reasoning: str | None = None  # when the endpoint returns reasoning as its own block


@dataclass(frozen=True)
class Reasoned:
    """A reasoning model's output split into its reasoning and its answer.

    ``complete`` is False when the reasoning was cut off (an opened ``<think>`` never
    closed, typically ``finish_reason='length'``): then ``answer`` is empty.
    """

    reasoning: str
    answer: str
    complete: bool = True


@dataclass(frozen=True)
class ChatResult:
    message: Message
    finish_reason: str | None
    logprobs: list[TokenLogprob] | None = None
    usage: Usage | None = None
    model: str | None = None

    @property
    def content(self) -> str:
        return self.message.content

    def reasoned(self, prompt_opened: bool = False) -> Reasoned:
        """Reasoning and answer (see ``split_reasoning``)."""
        if self.message.reasoning is not None:
            return Reasoned(self.message.reasoning.strip(), self.message.content.strip())
        return split_reasoning(self.message.content, prompt_opened=prompt_opened)


@dataclass(frozen=True)
class StreamDelta:
    """A piece of a streamed answer: new text of one choice, as the endpoint sent it.

    The last delta of a choice carries its ``finish_reason``; the last delta of the
    stream carries the request's ``usage``.
    """

    text: str
    index: int = 0
    finish_reason: str | None = None
    usage: Usage | None = None


@dataclass(frozen=True)
class Embeddings:
    """One vector per input, in input order."""

    vectors: list[list[float]]
    usage: Usage | None = None
    model: str | None = None
    normalized: bool = False

    @property
    def dim(self) -> int:
        return len(self.vectors[0])

    def array(self) -> np.ndarray:
        """The vectors as a ``(n_inputs, dim)`` float32 numpy array."""
        import numpy as np

        return np.asarray(self.vectors, dtype=np.float32)


# ---------------------------------------------------------------------- transport


def _post_invocations(
    w: WorkspaceClient, endpoint: str, body: dict[str, Any], *, accept: str
) -> Any:
    """POST ``body`` to the endpoint's invocations route through the SDK's API client,
    with its errors as ptdeploy's (an event stream comes back raw, as ``{"contents"}``)."""
    try:
        return w.api_client.do(
            "POST",
            f"/serving-endpoints/{endpoint}/invocations",
            body=body,
            headers={"Accept": accept, "Content-Type": "application/json"},
            raw=accept == "text/event-stream",
        )
    except NotFound as exc:
        raise EndpointNotFoundError(
            f"serving endpoint {endpoint!r} was not found ({exc}); check the name or create "
            "it with ptdeploy.serving.endpoints.create_or_update."
        ) from exc
    except BadRequest as exc:
        raise QueryError(f"endpoint {endpoint!r} refused the request: {exc}") from exc


def _invoke(w: WorkspaceClient, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST to the endpoint's invocations route through the SDK's API client."""
    answer = _post_invocations(w, endpoint, body, accept="application/json")
    if isinstance(answer, dict) and "choices" not in answer:
        # A custom pyfunc endpoint wraps the OpenAI-shaped answer in "predictions".
        preds = answer.get("predictions")
        if (
            isinstance(preds, list)
            and preds
            and isinstance(preds[0], dict)
            and "choices" in preds[0]
        ):
            answer = preds[0]
    if not isinstance(answer, dict) or not isinstance(answer.get("choices"), list):
        raise QueryError(
            f"endpoint {endpoint!r} answered without 'choices' ({_preview(answer)}): is it a "
            "completions/chat endpoint (task llm/v1/completions or llm/v1/chat)?"
        )
    return answer


def stream_chunks(w: WorkspaceClient, endpoint: str, body: dict[str, Any]) -> Iterator[dict]:
    """POST ``body`` with ``stream=true`` through the SDK's API client; yield each chunk.

    Same route, auth and error mapping as ``_invoke`` (``api_client.do(raw=True)``
    returns the body as a stream); events are ``data: <json>`` separated by blank lines,
    ending with ``data: [DONE]``. An error event (``{"error_code", "message"}``) raises.
    """
    streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
    contents = _post_invocations(w, endpoint, streamed, accept="text/event-stream")["contents"]
    try:
        buffer = b""
        while True:
            byte = contents.read(1)  # the SDK's stream has no readline; events are small
            if not byte:
                return
            buffer += byte
            if not buffer.endswith(b"\n\n"):
                continue
            lines, buffer = buffer.decode("utf-8").splitlines(), b""
            data = "\n".join(line[5:].lstrip() for line in lines if line.startswith("data:"))
            if not data:
                continue
            if data == "[DONE]":
                return
            chunk = json.loads(data)
            if "error_code" in chunk:
                raise QueryError(
                    f"endpoint {endpoint!r} failed while streaming: {chunk['error_code']}: "
                    f"{chunk.get('message')}"
                )
            yield chunk
    finally:
        contents.close()


def _deltas(chunks: Iterator[dict], chat: bool) -> Iterator[StreamDelta]:
    for chunk in chunks:
        usage = Usage.from_dict(chunk.get("usage"))
        choices = [c for c in chunk.get("choices") or [] if isinstance(c, dict)]
        if not choices and usage is not None:
            yield StreamDelta("", usage=usage)
        for c in choices:
            if chat:
                text = str((c.get("delta") or {}).get("content") or "")
            else:
                text = str(c.get("text") or "")
            yield StreamDelta(text, int(c.get("index", 0)), c.get("finish_reason"), usage)


def _preview(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _choices(answer: dict[str, Any], endpoint: str) -> list[dict[str, Any]]:
    choices = [c for c in answer["choices"] if isinstance(c, dict)]
    if not choices:
        raise QueryError(f"endpoint {endpoint!r} answered no choices ({_preview(answer)}).")
    return sorted(choices, key=lambda c: c.get("index", 0))


def _content_text(content: Any) -> tuple[str, str | None]:
    """Text and reasoning of a chat message's content (a string or a list of blocks)."""
    if content is None:
        return "", None
    if isinstance(content, str):
        return content, None
    texts: list[str] = []
    reasoning: list[str] = []
    for block in content if isinstance(content, list) else []:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            texts.append(str(block.get("text", "")))
        elif block.get("type") == "reasoning":
            for part in block.get("summary") or []:
                if isinstance(part, dict) and part.get("text"):
                    reasoning.append(str(part["text"]))
    return "".join(texts), ("\n\n".join(reasoning) if reasoning else None)


def _parse_logprobs(raw: Any) -> list[TokenLogprob] | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("content"), list):
        return None
    return [
        TokenLogprob(
            token=str(item.get("token", "")),
            logprob=float(item.get("logprob", 0.0)),
            top_logprobs=[
                TopLogprob(str(t.get("token", "")), float(t.get("logprob", 0.0)))
                for t in item.get("top_logprobs") or []
                if isinstance(t, dict)
            ],
        )
        for item in raw["content"]
        if isinstance(item, dict)
    ]


# ------------------------------------------------------------------------ queries


def _generation_body(max_tokens: Any, temperature: Any, stop: Any, **fields: Any) -> dict[str, Any]:
    """The checked fields every completions/chat call sends, after its own fields."""
    body: dict[str, Any] = {
        **fields,
        "max_tokens": _check_max_tokens(max_tokens),
        "temperature": _check_temperature(temperature),
    }
    stops = _check_stop(stop)
    if stops is not None:
        body["stop"] = stops
    return body


def complete(
    w: WorkspaceClient,
    endpoint: str,
    prompt: str | list[str],
    max_tokens: int,
    temperature: float = 0.0,
    stop: str | list[str] | None = None,
    n: int = 1,
) -> Completion:
    """Completions (``llm/v1/completions``): one text per prompt and candidate."""
    check_endpoint_name(endpoint)
    prompts = _check_texts(prompt, "prompt")
    body = _generation_body(
        max_tokens,
        temperature,
        stop,
        prompt=prompt if isinstance(prompt, str) else prompts,
        n=_check_n(n),
    )
    answer = _invoke(w, endpoint, body)
    choices = _choices(answer, endpoint)
    return Completion(
        texts=[str(c.get("text") or "") for c in choices],
        finish_reasons=[c.get("finish_reason") for c in choices],
        usage=Usage.from_dict(answer.get("usage")),
        model=answer.get("model"),
    )


def chat(
    w: WorkspaceClient,
    endpoint: str,
    messages: Sequence[Mapping[str, str] | ChatMessage],
    max_tokens: int,
    temperature: float = 0.0,
    logprobs: bool = False,
    top_logprobs: int | None = None,
    stop: str | list[str] | None = None,
) -> ChatResult:
    """Chat (``llm/v1/chat``): the assistant's message, with per-token log probabilities
    (and up to ``top_logprobs`` alternatives each) when ``logprobs=True``."""
    check_endpoint_name(endpoint)
    body = _generation_body(max_tokens, temperature, stop, messages=_check_messages(messages))
    _check_logprobs(logprobs, top_logprobs)
    if logprobs:
        body["logprobs"] = True
        if top_logprobs is not None:
            body["top_logprobs"] = top_logprobs
    answer = _invoke(w, endpoint, body)
    choice = _choices(answer, endpoint)[0]
    raw_message = choice.get("message") or {}
    content, reasoning = _content_text(raw_message.get("content"))
    return ChatResult(
        message=Message(
            role=str(raw_message.get("role") or "assistant"), content=content, reasoning=reasoning
        ),
        finish_reason=choice.get("finish_reason"),
        logprobs=_parse_logprobs(choice.get("logprobs")),
        usage=Usage.from_dict(answer.get("usage")),
        model=answer.get("model"),
    )


def stream_complete(
    w: WorkspaceClient,
    endpoint: str,
    prompt: str,
    max_tokens: int,
    temperature: float = 0.0,
    stop: str | list[str] | None = None,
) -> Iterator[StreamDelta]:
    """Completions streamed as they are generated: ``StreamDelta`` pieces of text.

    ``"".join(d.text for d in stream_complete(...))`` is the text ``complete`` returns;
    the last delta carries ``usage``.
    """
    check_endpoint_name(endpoint)
    _check_texts(prompt, "prompt")
    body = _generation_body(max_tokens, temperature, stop, prompt=prompt)
    return _deltas(stream_chunks(w, endpoint, body), chat=False)


def stream_chat(
    w: WorkspaceClient,
    endpoint: str,
    messages: Sequence[Mapping[str, str] | ChatMessage],
    max_tokens: int,
    temperature: float = 0.0,
    stop: str | list[str] | None = None,
) -> Iterator[StreamDelta]:
    """Chat streamed as it is generated: the assistant's message in ``StreamDelta`` pieces
    (for a chat UI or an agent); the last delta carries ``usage``."""
    check_endpoint_name(endpoint)
    body = _generation_body(max_tokens, temperature, stop, messages=_check_messages(messages))
    return _deltas(stream_chunks(w, endpoint, body), chat=True)


def _l2_normalize(vectors: list[list[float]]) -> list[list[float]]:
    out = []
    for vec in vectors:
        norm = math.sqrt(math.fsum(x * x for x in vec))
        out.append([x / norm for x in vec] if norm > 0 else list(vec))
    return out


def embed(
    w: WorkspaceClient,
    endpoint: str,
    inputs: str | list[str],
    normalize: bool = False,
) -> Embeddings:
    """Embeddings (``llm/v1/embeddings``), one vector per input.

    ``normalize=True`` scales each vector to unit L2 norm (a zero vector stays zero). GTE
    v1.5 does not return normalized embeddings: normalize before using dot products as
    cosine similarities.
    """
    check_endpoint_name(endpoint)
    texts = _check_texts(inputs, "inputs")
    try:
        resp = w.serving_endpoints.query(name=endpoint, input=texts)
    except NotFound as exc:
        raise EndpointNotFoundError(
            f"serving endpoint {endpoint!r} was not found ({exc}); check the name or create "
            "it with ptdeploy.serving.endpoints.create_or_update."
        ) from exc
    except BadRequest as exc:
        raise QueryError(f"endpoint {endpoint!r} refused the request: {exc}") from exc
    data = sorted(resp.data or [], key=lambda d: d.index or 0)
    if len(data) != len(texts) or any(not d.embedding for d in data):
        raise QueryError(
            f"endpoint {endpoint!r} answered {len(data)} embedding(s) for {len(texts)} input(s)"
            f"{' (some empty)' if any(not d.embedding for d in data) else ''}: is it an "
            "embeddings endpoint (task llm/v1/embeddings)?"
        )
    vectors = [[float(x) for x in d.embedding or []] for d in data]
    if normalize:
        vectors = _l2_normalize(vectors)
    usage = resp.usage
    return Embeddings(
        vectors=vectors,
        usage=Usage(usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)
        if usage
        else None,
        model=resp.model,
        normalized=normalize,
    )


# ---------------------------------------------------------------------- reasoning


def split_reasoning(text: str, prompt_opened: bool = False) -> Reasoned:
    """Split a DeepSeek-R1 style output ``<think>reasoning</think>answer``.

    - Several ``<think>`` blocks: their reasoning is joined (blank line between), the text
      around them is the answer.
    - ``</think>`` without an opening tag: the chat template opened ``<think>`` in the
      prompt (R1-distill templates do), so the output starts mid-reasoning; everything
      before the first ``</think>`` is reasoning.
    - An opened block never closed: the reasoning was cut off (``max_tokens``): it is all
      reasoning, ``answer`` is empty and ``complete`` is False. The answer is left empty
      rather than guessed from half a thought.
    - No tags: an answer without reasoning, unless ``prompt_opened=True`` (you know the
      prompt ended with ``<think>``): then it is unfinished reasoning.
    - Empty blocks (``<think>\\n\\n</think>``) give empty reasoning; whitespace around
      both parts is stripped; stray ``</think>`` left in the answer are removed.
    """
    if not isinstance(text, str):
        raise QueryError(f"text={text!r} is not a string.")
    reasoning: list[str] = []
    answer: list[str] = []
    complete = True
    pos = 0
    first_open, first_close = text.find(THINK_OPEN), text.find(THINK_CLOSE)
    if first_close != -1 and (first_open == -1 or first_close < first_open):
        reasoning.append(text[:first_close])
        pos = first_close + len(THINK_CLOSE)
    elif prompt_opened and first_open == -1:
        return Reasoned(reasoning=text.strip(), answer="", complete=False)
    while True:
        start = text.find(THINK_OPEN, pos)
        if start == -1:
            answer.append(text[pos:])
            break
        answer.append(text[pos:start])
        end = text.find(THINK_CLOSE, start + len(THINK_OPEN))
        if end == -1:
            reasoning.append(text[start + len(THINK_OPEN) :])
            complete = False
            break
        reasoning.append(text[start + len(THINK_OPEN) : end])
        pos = end + len(THINK_CLOSE)

    def join(parts: list[str]) -> str:
        return "\n\n".join(p.strip() for p in parts if p.strip())

    answer_text = join([a.replace(THINK_CLOSE, "") for a in answer])
    return Reasoned(
        reasoning=join(reasoning), answer=answer_text if complete else "", complete=complete
    )


# --------------------------------------------------------------------- similarity


@dataclass(frozen=True)
class SimilarityTable:
    """Pairwise cosine similarities; ``str()`` prints an aligned table."""

    labels: list[str]
    matrix: list[list[float]]

    def rows(self) -> list[dict[str, Any]]:
        """One dict per text: ``{"text": ..., <other text>: similarity, ...}``."""
        return [
            {"text": label, **{other: self.matrix[i][j] for j, other in enumerate(self.labels)}}
            for i, label in enumerate(self.labels)
        ]

    def most_similar(self, i: int) -> tuple[str, float]:
        """The other text closest to text ``i``."""
        candidates = [(self.matrix[i][j], j) for j in range(len(self.labels)) if j != i]
        score, j = max(candidates)
        return self.labels[j], score

    def format(self, width: int = 28) -> str:
        def cut(s: str) -> str:
            return s if len(s) <= width else s[: width - 1] + "…"

        heads = [f"#{j}" for j in range(len(self.labels))]
        col = max(7, *(len(h) for h in heads))
        lines = [" " * (width + 5) + " ".join(h.rjust(col) for h in heads)]
        for i, label in enumerate(self.labels):
            cells = " ".join(f"{v:{col}.3f}" for v in self.matrix[i])
            lines.append(f"#{i:<3} {cut(label):<{width}}{cells}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def cosine_similarity_table(
    texts: Sequence[str], vectors: Sequence[Sequence[float]] | Embeddings
) -> SimilarityTable:
    """Cosine similarity of every pair of ``vectors`` (normalized or not), labelled by ``texts``.

    A zero vector has no direction: its similarities are NaN.
    """
    import numpy as np

    if isinstance(vectors, Embeddings):
        vectors = vectors.vectors
    labels = list(texts)
    if not labels or len(labels) != len(vectors):
        raise QueryError(
            f"texts ({len(labels)}) and vectors ({len(vectors)}) must be non-empty and of the "
            "same length: one vector per text."
        )
    dims = {len(v) for v in vectors}
    if len(dims) != 1 or 0 in dims:
        raise QueryError(
            f"vectors have dimensions {sorted(dims)}: they must all have one same, non-zero dimension."
        )
    m = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(m, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        unit = m / norms[:, None]
        sims = np.clip(unit @ unit.T, -1.0, 1.0)
    return SimilarityTable(labels=labels, matrix=[[float(x) for x in row] for row in sims])


# ------------------------------------------------------------------------- openai


def openai_client(w: WorkspaceClient, **kwargs: Any) -> openai.OpenAI:
    """An ``openai.OpenAI`` client for the workspace's endpoints (``model=<endpoint name>``).

    The API key is the bearer token the SDK's unified auth produces now
    (``w.config.authenticate()``); an OAuth token expires (about an hour): build a new
    client for long sessions. Extra keyword arguments go to ``openai.OpenAI``.
    """
    from openai import OpenAI

    headers = w.config.authenticate()
    scheme, _, token = str(headers.get("Authorization", "")).partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise PtdeployError(
            f"the workspace client authenticates with {scheme or 'no'} credentials, not a "
            "bearer token, which the OpenAI client needs: use a personal access token or "
            "OAuth (DATABRICKS_TOKEN, a profile, or the notebook context)."
        )
    host = str(w.config.host).rstrip("/")
    return OpenAI(base_url=f"{host}/serving-endpoints", api_key=token, **kwargs)
