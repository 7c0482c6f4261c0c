"""Load-test a serving endpoint at a ladder of concurrency levels, through databricks-sdk.

Works the same against the local workspace and a Databricks workspace: it only needs a
``databricks.sdk.WorkspaceClient`` (or any object with the same
``serving_endpoints.query`` / ``serving_endpoints.get`` methods, which is the seam the
unit tests use).

Public API (for notebooks)::

    from ptdeploy.capacity import loadtest, plots, planner

    result = loadtest.run_load_test(
        w, "my-endpoint",
        task=None,                      # detected from the endpoint; or "chat", ...
        concurrency=(1, 2, 4, 8),
        requests_per_level=20,          # at most N requests per level ...
        max_seconds_per_level=30,       # ... and no new request after D seconds
        prompt="...", max_tokens=64,    # payload: messages=[...] for chat,
                                        # inputs=[...] for embeddings
        out_dir="loadtest-out",         # samples.csv/json, levels.csv, summary.json
    )
    print(result.to_text())             # the table; result.table() -> list of dicts
    result.to_dataframe()               # pandas DataFrame, one row per level
    figs = plots.plot_load_test(result, out_dir="loadtest-out")  # Figures + PNGs
    best = result.best_level(p95_latency_target_s=2.0)
    planner.assess_provisioning(min_tp, max_tp, best.total_tokens_per_second, chunk)

Design choices:

* Requests go through ``w.serving_endpoints.query(name, ...)``: the SDK's public,
  typed call (``usage`` arrives parsed) that posts to
  ``/serving-endpoints/{name}/invocations`` exactly like users' code does, with the
  SDK's unified auth. Latency is measured with the injected clock immediately around
  that call, so it includes the HTTP round trip and JSON parsing, nothing else.
* Each level is a closed loop: ``concurrency`` worker threads each send one request,
  wait for the answer, send the next. A level stops issuing after ``requests_per_level``
  requests or ``max_seconds_per_level`` seconds, whichever comes first; requests in
  flight then finish (bounded by the SDK's HTTP timeout).
* The SDK silently retries HTTP 429/503 and connection errors for up to
  ``retry_timeout_seconds`` (300 s by default). That would hide throttling, the very
  thing a load test looks for, and stretch a level far past its time cap. Unless
  ``retry_throttled=True``, requests go through a copy of the client that makes exactly
  one attempt (its retry clock treats any back-off as spending the whole retry budget,
  so the error is recorded at once with its status code), and whose HTTP connection
  pool is as large as the highest concurrency (the SDK's default pool of 20 blocks,
  which would add client-side queueing to the measured latency). The caller's client is
  not modified. This relies on two private details of databricks-sdk 0.162
  (``Config._inner``, ``Config._clock``); tests pin them.
* Rates divide by the level's wall time (first request sent to last answer received).
  Latency percentiles (linear interpolation, as numpy's default) use successful
  requests only; failed ones are counted in ``errors`` and kept in the raw samples.
  Token rates come from each response's ``usage`` (prompt + completion tokens); they
  are ``None`` when the endpoint reports no usage.
"""

from __future__ import annotations

import collections
import csv
import enum
import io
import json
import math
import numbers
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptdeploy.clock import Clock, MonotonicClock
from ptdeploy.errors import EndpointError, ParameterError
from ptdeploy.llm_tasks import TASK_CHAT, TASK_COMPLETIONS, TASK_EMBEDDINGS
from ptdeploy.progress import Progress
from ptdeploy.state import write_atomic

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_PROMPT",
    "LevelResult",
    "LoadTestResult",
    "Payload",
    "Sample",
    "Task",
    "build_payload",
    "detect_task",
    "parse_task",
    "percentile",
    "run_load_test",
]

DEFAULT_CONCURRENCY: tuple[int, ...] = (1, 2, 4, 8)
DEFAULT_REQUESTS_PER_LEVEL = 20
DEFAULT_MAX_SECONDS_PER_LEVEL = 30.0
DEFAULT_MAX_TOKENS = 64
DEFAULT_PROMPT = (
    "Explain in two sentences what provisioned throughput means for a model serving endpoint."
)
MAX_CONCURRENCY = 256
MAX_REQUESTS_PER_LEVEL = 100_000
# Retry budget of the load-test client (0 would mean the SDK default, 300 s).
_NO_RETRY_BUDGET_S = 1
_SDK_DEFAULT_POOL = 20


# --------------------------------------------------------------------------- tasks


class Task(enum.StrEnum):
    """The three serving tasks of provisioned-throughput LLM endpoints."""

    COMPLETIONS = TASK_COMPLETIONS
    CHAT = TASK_CHAT
    EMBEDDINGS = TASK_EMBEDDINGS

    @property
    def short(self) -> str:
        return self.value.rsplit("/", 1)[-1]


_TASK_NAMES = {t.short: t for t in Task} | {t.value: t for t in Task}


def parse_task(value: Task | str, field_name: str = "task") -> Task:
    """``"chat"``, ``"llm/v1/chat"`` (any case) or a :class:`Task` -> :class:`Task`."""
    if isinstance(value, Task):
        return value
    if isinstance(value, str) and value.strip().lower() in _TASK_NAMES:
        return _TASK_NAMES[value.strip().lower()]
    valid = ", ".join(sorted(_TASK_NAMES))
    raise ParameterError(f"{field_name}: got {value!r}; expected one of {valid}.")


def detect_task(w: Any, endpoint: str) -> Task:
    """The task of ``endpoint`` from ``w.serving_endpoints.get``: the endpoint's ``task``,
    else a served entity's external-model task. Raises ParameterError when neither says.
    """
    try:
        ep = w.serving_endpoints.get(endpoint)
    except Exception as err:  # 404, auth, network: the load test could not work either
        raise EndpointError(
            f"endpoint {endpoint!r}: cannot read it to detect its task "
            f"({type(err).__name__}: {err}). Check the name and credentials, or pass task=."
        ) from err
    return endpoint_task(ep, endpoint)


def endpoint_task(ep: Any, endpoint: str) -> Task:
    """The task an endpoint description (``ServingEndpointDetailed``) reports: its ``task``,
    else a served entity's external-model task; ParameterError when neither says."""
    found: list[str] = []
    if getattr(ep, "task", None):
        found.append(ep.task)
    for config in (getattr(ep, "config", None), getattr(ep, "pending_config", None)):
        for entity in getattr(config, "served_entities", None) or []:
            external = getattr(entity, "external_model", None)
            if getattr(external, "task", None):
                found.append(external.task)
    for candidate in found:
        try:
            return parse_task(candidate)
        except ParameterError:
            continue
    seen = f" (it reports {', '.join(map(repr, found))})" if found else ""
    raise ParameterError(
        f"task: cannot determine the task of endpoint {endpoint!r} from its config{seen}; "
        "pass task= one of completions, chat, embeddings."
    )


# --------------------------------------------------------------------------- payload


@dataclass(frozen=True)
class Payload:
    """What every request of a load test sends (the same body each time)."""

    task: Task
    prompt: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    messages: tuple[dict[str, str], ...] | None = None
    input: tuple[str, ...] | None = None

    def body(self) -> dict[str, Any]:
        """The JSON body as the endpoint receives it (saved in summary.json)."""
        body: dict[str, Any] = {}
        if self.task is Task.EMBEDDINGS:
            body["input"] = list(self.input or ())
            return body
        if self.task is Task.CHAT:
            body["messages"] = [dict(m) for m in self.messages or ()]
        else:
            body["prompt"] = self.prompt
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        if self.temperature is not None:
            body["temperature"] = self.temperature
        return body

    def query_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``w.serving_endpoints.query``."""
        kwargs = self.body()
        if self.task is Task.CHAT:
            from databricks.sdk.service.serving import ChatMessage

            kwargs["messages"] = [ChatMessage.from_dict(m) for m in kwargs["messages"]]
        return kwargs


def int_param(name: str, value: Any, low: int, high: int | None = None) -> int:
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok or value < low or (high is not None and value > high):
        rng = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ParameterError(f"{name}: got {value!r}; expected a whole number {rng}.")
    return int(value)


def float_param(
    name: str, value: Any, low: float, high: float | None = None, *, strict: bool = False
) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if strict else value >= low) and (high is None or value <= high)
    if not ok:
        lo = f"> {low:g}" if strict else f">= {low:g}"
        rng = f"{lo} and <= {high:g}" if high is not None else lo
        raise ParameterError(f"{name}: got {value!r}; expected a number {rng}.")
    return float(value)


def build_payload(
    task: Task | str,
    *,
    prompt: str | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    messages: Sequence[dict[str, str]] | None = None,
    inputs: Sequence[str] | None = None,
) -> Payload:
    """A validated request body for ``task``.

    completions: ``prompt`` (default :data:`DEFAULT_PROMPT`), ``max_tokens`` (default
    :data:`DEFAULT_MAX_TOKENS`), ``temperature``. chat: ``messages`` (default: one user
    message with ``prompt``), ``max_tokens``, ``temperature``. embeddings: ``inputs``
    (default: ``[prompt]``); ``max_tokens``/``temperature``/``messages`` are refused.
    """
    task = parse_task(task)
    if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
        raise ParameterError(f"prompt: got {prompt!r}; expected a non-empty string.")
    text = prompt or DEFAULT_PROMPT
    if temperature is not None:
        temperature = float_param("temperature", temperature, 0.0, 2.0)
    if task is Task.EMBEDDINGS:
        for name, value in (
            ("max_tokens", max_tokens),
            ("temperature", temperature),
            ("messages", messages),
        ):
            if value is not None:
                raise ParameterError(
                    f"{name}: got {value!r}, but embeddings endpoints take only input; "
                    "leave it unset (use prompt= or inputs= for the text to embed)."
                )
        items = list(inputs) if inputs is not None else [text]
        if not items or not all(isinstance(i, str) and i for i in items):
            raise ParameterError(
                f"inputs: got {inputs!r}; expected a non-empty list of non-empty strings."
            )
        return Payload(task=task, input=tuple(items))
    if inputs is not None:
        raise ParameterError(
            f"inputs: got {inputs!r}, but only embeddings take input; use prompt= or messages=."
        )
    tokens = int_param("max_tokens", DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens, 1)
    if task is Task.CHAT:
        msgs = list(messages) if messages is not None else [{"role": "user", "content": text}]
        valid = bool(msgs) and all(
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
            for m in msgs
        )
        if not valid:
            raise ParameterError(
                f"messages: got {messages!r}; expected a non-empty list of "
                '{"role": ..., "content": ...} dicts.'
            )
        return Payload(
            task=task,
            max_tokens=tokens,
            temperature=temperature,
            messages=tuple(dict(m) for m in msgs),
        )
    if messages is not None:
        raise ParameterError(
            f"messages: got {messages!r}, but only chat takes messages; use prompt=."
        )
    return Payload(task=task, prompt=text, max_tokens=tokens, temperature=temperature)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Sample:
    """One request: when it started (s since its level started), how long it took, tokens, error."""

    concurrency: int
    index: int
    start_s: float
    latency_s: float
    ok: bool
    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None
    error_type: str | None = None
    error_message: str | None = None
    status_code: int | None = None
    # streamed requests only: time to the first piece of text, mean gap between pieces
    time_to_first_token_s: float | None = None
    inter_token_latency_s: float | None = None


def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) with linear interpolation between closest ranks
    (numpy's default method); ``None`` for no values."""
    xs = sorted(values)
    if not xs:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"q: got {q}; expected 0..100")
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass(frozen=True)
class LevelResult:
    """Aggregates of one concurrency level. Rates are per second of the level's wall time."""

    concurrency: int
    requests: int
    errors: int
    duration_s: float
    requests_per_second: float | None
    output_tokens_per_second: float | None
    total_tokens_per_second: float | None
    p50_latency_s: float | None
    p95_latency_s: float | None
    p99_latency_s: float | None
    mean_latency_s: float | None
    stop_reason: str  # "requests" (count cap), "duration" (time cap)
    # streamed load tests only (None otherwise): time to first token, inter-token latency
    p50_time_to_first_token_s: float | None = None
    p95_time_to_first_token_s: float | None = None
    mean_inter_token_latency_s: float | None = None

    @classmethod
    def from_samples(
        cls, concurrency: int, samples: Sequence[Sample], duration_s: float, stop_reason: str
    ) -> LevelResult:
        ok = [s for s in samples if s.ok]
        latencies = [s.latency_s for s in ok]
        with_usage = [s for s in ok if s.total_tokens is not None]
        ttft = [s.time_to_first_token_s for s in ok if s.time_to_first_token_s is not None]
        itl = [s.inter_token_latency_s for s in ok if s.inter_token_latency_s is not None]

        def rate(amount: float) -> float | None:
            return amount / duration_s if duration_s > 0 else None

        return cls(
            concurrency=concurrency,
            requests=len(samples),
            errors=len(samples) - len(ok),
            duration_s=duration_s,
            requests_per_second=rate(len(ok)),
            output_tokens_per_second=rate(sum(s.output_tokens or 0 for s in with_usage))
            if with_usage
            else None,
            total_tokens_per_second=rate(sum(s.total_tokens or 0 for s in with_usage))
            if with_usage
            else None,
            p50_latency_s=percentile(latencies, 50),
            p95_latency_s=percentile(latencies, 95),
            p99_latency_s=percentile(latencies, 99),
            mean_latency_s=sum(latencies) / len(latencies) if latencies else None,
            stop_reason=stop_reason,
            p50_time_to_first_token_s=percentile(ttft, 50),
            p95_time_to_first_token_s=percentile(ttft, 95),
            mean_inter_token_latency_s=sum(itl) / len(itl) if itl else None,
        )


_TABLE_COLUMNS = (
    ("concurrency", "concurrency", "{:d}"),
    ("requests", "requests", "{:d}"),
    ("errors", "errors", "{:d}"),
    ("req/s", "requests_per_second", "{:.2f}"),
    ("out tok/s", "output_tokens_per_second", "{:.1f}"),
    ("total tok/s", "total_tokens_per_second", "{:.1f}"),
    ("p50 s", "p50_latency_s", "{:.3f}"),
    ("p95 s", "p95_latency_s", "{:.3f}"),
    ("p99 s", "p99_latency_s", "{:.3f}"),
    ("stop", "stop_reason", "{}"),
)
_STREAM_COLUMNS = (
    ("p50 ttft s", "p50_time_to_first_token_s", "{:.3f}"),
    ("p95 ttft s", "p95_time_to_first_token_s", "{:.3f}"),
    ("itl ms", "mean_inter_token_latency_s", "{:.1f}"),
)


@dataclass
class LoadTestResult:
    """Levels, raw samples and what was sent. ``out_dir`` is set once saved."""

    endpoint: str
    task: Task
    payload: Payload
    requests_per_level: int
    max_seconds_per_level: float
    levels: list[LevelResult]
    samples: list[Sample]
    started_at: str
    out_dir: Path | None = None

    @property
    def total_requests(self) -> int:
        return len(self.samples)

    @property
    def all_failed(self) -> bool:
        """True when no request succeeded (including when none was sent)."""
        return not any(s.ok for s in self.samples)

    def table(self) -> list[dict[str, Any]]:
        """One dict per level (the fields of :class:`LevelResult`)."""
        return [asdict(level) for level in self.levels]

    @property
    def streamed(self) -> bool:
        """Whether requests were streamed (time to first token was measured)."""
        return any(lv.p50_time_to_first_token_s is not None for lv in self.levels)

    def to_text(self) -> str:
        """The table as aligned text, ``-`` where a value is undefined (streamed tests add
        time to first token and inter-token latency)."""
        columns = _TABLE_COLUMNS + (_STREAM_COLUMNS if self.streamed else ())
        header = [title for title, _, _ in columns]

        def cell(lv: LevelResult, key: str, fmt: str) -> str:
            value = getattr(lv, key)
            if value is None:
                return "-"
            return fmt.format(value * 1000 if key == "mean_inter_token_latency_s" else value)

        rows = [[cell(lv, key, fmt) for _, key, fmt in columns] for lv in self.levels]
        widths = [
            max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
            for i, h in enumerate(header)
        ]
        lines = ["  ".join(h.rjust(wd) for h, wd in zip(header, widths, strict=True))]
        lines += ["  ".join(c.rjust(wd) for c, wd in zip(r, widths, strict=True)) for r in rows]
        return "\n".join(lines)

    def to_dataframe(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.table())

    def errors_by_kind(self) -> dict[str, int]:
        """Failed requests counted by ``Type (status): message``, most frequent first."""
        kinds = collections.Counter(
            f"{s.error_type} ({s.status_code if s.status_code is not None else 'no status'}): "
            f"{(s.error_message or '').splitlines()[0][:200] if s.error_message else ''}"
            for s in self.samples
            if not s.ok
        )
        return dict(kinds.most_common())

    def best_level(self, p95_latency_target_s: float | None = None) -> LevelResult | None:
        """The level with the highest total tokens/s (requests/s when no usage is
        reported) among those with a p95 latency within the target, if any."""
        eligible = [
            lv
            for lv in self.levels
            if lv.p95_latency_s is not None
            and (p95_latency_target_s is None or lv.p95_latency_s <= p95_latency_target_s)
        ]
        if not eligible:
            return None
        return max(
            eligible,
            key=lambda lv: (lv.total_tokens_per_second or 0.0, lv.requests_per_second or 0.0),
        )

    def summary(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "task": self.task.value,
            "payload": self.payload.body(),
            "requests_per_level": self.requests_per_level,
            "max_seconds_per_level": self.max_seconds_per_level,
            "started_at": self.started_at,
            "levels": self.table(),
            "errors_by_kind": self.errors_by_kind(),
        }

    def save(self, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
        """Write samples.csv, samples.json, levels.csv and summary.json into ``out_dir``.

        Each file is written to a temporary name then renamed, so a failure never leaves
        a truncated file behind.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        sample_rows = [asdict(s) for s in self.samples]
        level_rows = self.table()
        written = {
            "samples_csv": _write_csv(
                out / "samples.csv", [f.name for f in fields(Sample)], sample_rows
            ),
            "samples_json": _write_text(out / "samples.json", json.dumps(sample_rows, indent=1)),
            "levels_csv": _write_csv(
                out / "levels.csv", [f.name for f in fields(LevelResult)], level_rows
            ),
            "summary_json": _write_text(out / "summary.json", json.dumps(self.summary(), indent=2)),
        }
        self.out_dir = out
        return written


def _write_text(path: Path, text: str) -> Path:
    write_atomic(path, text + "\n")
    return path


def _write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> Path:
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buffer.getvalue())
    return path


# --------------------------------------------------------------------------- running


def _status_code(err: BaseException) -> int | None:
    """The HTTP status behind an error: SDK error classes map 1:1 to status codes."""
    code = getattr(err, "status_code", None)
    if isinstance(code, int):
        return code
    response = getattr(err, "response", None)
    if isinstance(getattr(response, "status_code", None), int):
        return response.status_code
    try:
        from databricks.sdk.errors.platform import STATUS_CODE_MAPPING
    except ImportError:  # pragma: no cover - the SDK is a dependency
        return None
    for status, cls in STATUS_CODE_MAPPING.items():
        if isinstance(err, cls):
            return status
    return None


def _describe_error(err: BaseException) -> tuple[str, str, int | None]:
    """(type, message, status). The SDK's retry wrapper raises ``TimeoutError`` from the
    real error (a 429 once the retry budget is spent): report the real one."""
    cause = err.__cause__
    if isinstance(err, TimeoutError) and cause is not None:
        return type(cause).__name__, f"{cause} (SDK: {err})"[:2000], _status_code(cause)
    return type(err).__name__, str(err)[:2000], _status_code(err)


def _usage(response: Any) -> tuple[int | None, int | None, int | None]:
    """(input, output, total) tokens from a response's ``usage`` (object or dict)."""
    usage = (
        response.get("usage") if isinstance(response, dict) else getattr(response, "usage", None)
    )
    if usage is None:
        return None, None, None

    def get(name: str) -> int | None:
        value = usage.get(name) if isinstance(usage, dict) else getattr(usage, name, None)
        return (
            int(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else None
        )

    prompt, completion, total = get("prompt_tokens"), get("completion_tokens"), get("total_tokens")
    if prompt is None and completion is None and total is None:
        return None, None, None
    if total is None:
        total = (prompt or 0) + (completion or 0)
    if completion is None and prompt is not None:
        completion = max(total - prompt, 0)
    return prompt, completion, total


class _NoRetryWaitClock:
    """The retry clock of the load-test client: a back-off never waits, it moves this
    thread's clock past the retry budget, so the SDK's retry loop gives up after the
    first attempt and raises at once. Per thread, so one request's back-off does not
    shorten another's budget. Implements ``databricks.sdk.clock.Clock``."""

    def __init__(self) -> None:
        self._offset = threading.local()

    def time(self) -> float:
        return time.time() + getattr(self._offset, "value", 0.0)

    def sleep(self, seconds: float) -> None:
        self._offset.value = getattr(self._offset, "value", 0.0) + max(
            seconds, _NO_RETRY_BUDGET_S + 1.0
        )


def _load_test_client(w: Any, max_concurrency: int) -> Any:
    """A copy of ``w`` that makes one attempt per request (no retry of 429/503) and has a
    connection pool as large as ``max_concurrency``; non-SDK clients (test fakes) are
    used as given."""
    try:
        from databricks.sdk import WorkspaceClient
    except ImportError:  # pragma: no cover - the SDK is a dependency
        return w
    if not isinstance(w, WorkspaceClient):
        return w
    cfg = w.config.copy()
    inner = getattr(cfg, "_inner", None)
    if not isinstance(inner, dict) or not hasattr(cfg, "_clock"):
        import warnings

        warnings.warn(
            "ptdeploy.capacity.loadtest: this databricks-sdk version's Config cannot be copied for a "
            "load test; throttled requests (429/503) will be retried by the SDK and counted "
            "as slow successes. Pass retry_throttled=True to silence this warning.",
            stacklevel=3,
        )
        return w
    # Config.copy() shares the attribute dict with the original: give the copy its own,
    # so the caller's client keeps its retry budget and pool.
    cfg._inner = dict(inner)
    cfg._clock = _NoRetryWaitClock()
    cfg.retry_timeout_seconds = _NO_RETRY_BUDGET_S
    pool = max(_SDK_DEFAULT_POOL, max_concurrency)
    cfg.max_connection_pools = pool
    cfg.max_connections_per_pool = pool
    return WorkspaceClient(config=cfg)


def check_concurrency(concurrency: Any) -> tuple[int, ...]:
    if isinstance(concurrency, numbers.Integral) and not isinstance(concurrency, bool):
        concurrency = (concurrency,)
    if isinstance(concurrency, (str, bytes)) or not isinstance(concurrency, Iterable):
        raise ParameterError(
            f"concurrency: got {concurrency!r}; expected a list of whole numbers between 1 and "
            f"{MAX_CONCURRENCY}, e.g. (1, 2, 4, 8)."
        )
    levels = tuple(concurrency)
    if not levels:
        raise ParameterError(
            "concurrency: got an empty list; expected at least one level, e.g. (1, 2, 4, 8)."
        )
    for level in levels:
        int_param("concurrency", level, 1, MAX_CONCURRENCY)
    if len(set(levels)) != len(levels):
        raise ParameterError(f"concurrency: got {list(levels)!r}; expected each level once.")
    return tuple(int(level) for level in levels)


def run_load_test(
    w: Any,
    endpoint: str,
    *,
    task: Task | str | None = None,
    concurrency: Sequence[int] = DEFAULT_CONCURRENCY,
    requests_per_level: int = DEFAULT_REQUESTS_PER_LEVEL,
    max_seconds_per_level: float = DEFAULT_MAX_SECONDS_PER_LEVEL,
    prompt: str | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    messages: Sequence[dict[str, str]] | None = None,
    inputs: Sequence[str] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    clock: Clock | None = None,
    progress: Progress = True,
    retry_throttled: bool = False,
    stream: bool = False,
) -> LoadTestResult:
    """Load-test ``endpoint`` at each level of ``concurrency`` and return the results.

    ``w`` is a ``WorkspaceClient`` (``ptdeploy.targets.workspace_client(target)``).
    ``task=None`` asks the endpoint (:func:`detect_task`). Payload arguments as in
    :func:`build_payload`. With ``out_dir`` the raw samples and the table are saved there
    (:meth:`LoadTestResult.save`). ``clock`` (a ``ptdeploy.clock.Clock``, monotonic by default) times the
    requests and the duration cap; tests inject a fake one. ``retry_throttled=True`` keeps the SDK's
    own retries of 429/503 (latency then includes the waits). ``progress``: a bar per
    level (``True``), none, or a callable called with each :class:`Sample` as it lands
    (``ptdeploy.progress``). ``stream=True`` (completions and chat) sends ``stream: true``
    and also records each request's time to first token and mean inter-token latency
    (the gap between text chunks), per level as p50/p95 and mean.

    Raises :class:`~ptdeploy.errors.ParameterError` for invalid arguments and
    :class:`~ptdeploy.errors.EndpointError` when the task must be detected and the
    endpoint cannot be read. Failed requests do not raise: they are recorded.
    """
    if not isinstance(endpoint, str) or not endpoint.strip():
        raise ParameterError(
            f"endpoint: got {endpoint!r}; expected the name of a serving endpoint."
        )
    levels = check_concurrency(concurrency)
    count_cap = int_param("requests_per_level", requests_per_level, 1, MAX_REQUESTS_PER_LEVEL)
    time_cap = float_param("max_seconds_per_level", max_seconds_per_level, 0.0, strict=True)
    resolved = parse_task(task) if task is not None else None
    # Validate the payload before touching the endpoint (with the detected task below).
    payload_args = dict(
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=temperature,
        messages=messages,
        inputs=inputs,
    )
    if not isinstance(stream, bool):
        raise ParameterError(f"stream: got {stream!r}; expected True or False.")
    if resolved is None:
        resolved = detect_task(w, endpoint)
    payload = build_payload(resolved, **payload_args)
    if stream and resolved is Task.EMBEDDINGS:
        raise ParameterError(
            "stream: embeddings endpoints answer in one response; stream=True is for "
            "completions and chat endpoints."
        )

    clock = clock or MonotonicClock()
    client = w if retry_throttled else _load_test_client(w, max(levels))
    query_kwargs = payload.query_kwargs()
    send = _streamed_sender(payload) if stream else None
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    results: list[LevelResult] = []
    samples: list[Sample] = []
    for level in levels:
        level_samples, duration, reason = _run_level(
            client, endpoint, query_kwargs, level, count_cap, time_cap, clock, progress, send
        )
        samples.extend(level_samples)
        results.append(LevelResult.from_samples(level, level_samples, duration, reason))

    result = LoadTestResult(
        endpoint=endpoint,
        task=resolved,
        payload=payload,
        requests_per_level=count_cap,
        max_seconds_per_level=time_cap,
        levels=results,
        samples=samples,
        started_at=started_at,
    )
    if out_dir is not None:
        result.save(out_dir)
    return result


def _run_level(
    client: Any,
    endpoint: str,
    query_kwargs: dict[str, Any],
    concurrency: int,
    count_cap: int,
    time_cap: float,
    clock: Clock,
    progress: Progress,
    send: Callable[[Any, str, Callable[[], float]], tuple[Any, float | None, float | None]]
    | None = None,
) -> tuple[list[Sample], float, str]:
    """One closed-loop level: ``concurrency`` workers, at most ``count_cap`` requests, none
    issued after ``time_cap`` seconds. Returns (samples by index, wall time, stop reason).
    ``send`` streams a request instead and returns (usage holder, ttft, inter-token)."""
    from tqdm.auto import tqdm

    lock = threading.Lock()
    issued = 0
    stop_reason = "requests"
    samples: list[Sample] = []
    bar = tqdm(
        total=count_cap,
        desc=f"{endpoint} concurrency {concurrency}",
        unit="req",
        disable=not progress or callable(progress),  # a callback: the caller draws
    )
    start = clock.time()

    def next_ticket() -> int | None:
        nonlocal issued, stop_reason
        with lock:
            if issued >= count_cap:
                return None
            if clock.time() - start >= time_cap:
                stop_reason = "duration"
                return None
            issued += 1
            return issued - 1

    def worker() -> None:
        while (index := next_ticket()) is not None:
            t0 = clock.time()
            first = gap = None
            try:
                if send is None:
                    response = client.serving_endpoints.query(endpoint, **query_kwargs)
                else:
                    response, first, gap = send(client, endpoint, clock)
            except Exception as err:  # recorded, never raised: a load test counts failures
                t1 = clock.time()
                kind, message, status = _describe_error(err)
                sample = Sample(
                    concurrency,
                    index,
                    t0 - start,
                    t1 - t0,
                    False,
                    error_type=kind,
                    error_message=message,
                    status_code=status,
                )
            else:
                t1 = clock.time()
                tokens_in, tokens_out, tokens_total = _usage(response)
                sample = Sample(
                    concurrency,
                    index,
                    t0 - start,
                    t1 - t0,
                    True,
                    input_tokens=tokens_in,
                    output_tokens=tokens_out,
                    total_tokens=tokens_total,
                    time_to_first_token_s=None if first is None else first - t0,
                    inter_token_latency_s=gap,
                )
            with lock:
                samples.append(sample)
                if callable(progress):
                    progress(sample)  # one at a time, never from two workers at once
            bar.update(1)

    try:
        with ThreadPoolExecutor(
            max_workers=concurrency, thread_name_prefix=f"loadtest-c{concurrency}"
        ) as pool:
            futures = [pool.submit(worker) for _ in range(concurrency)]
            for future in futures:
                future.result()
    finally:
        bar.close()
    duration = clock.time() - start
    samples.sort(key=lambda s: s.index)
    return samples, duration, stop_reason


def _streamed_sender(
    payload: Payload,
) -> Callable[[Any, str, Callable[[], float]], tuple[Any, float | None, float | None]]:
    """Send the payload with ``stream: true``; time the chunks that carry text.

    Returns (a dict with the last ``usage``, the clock at the first text, the mean gap
    between text chunks or None with fewer than two).
    """
    from ptdeploy.serving.query import stream_chunks

    body = payload.body()
    chat = payload.task is Task.CHAT

    def send(client: Any, endpoint: str, clock: Clock) -> tuple[Any, float | None, float | None]:
        times: list[float] = []
        usage = None
        for chunk in stream_chunks(client, endpoint, body):
            now = clock.time()
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or []:
                text = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
                if text:
                    times.append(now)
                    break
        first = times[0] if times else None
        gap = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else None
        return {"usage": usage}, first, gap

    return send
