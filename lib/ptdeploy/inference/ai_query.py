"""``ai_query`` — the SQL text of a batch, and the function that answers it offline.

On Databricks, ``ai_query`` is a built-in SQL function (Databricks Runtime 15.3+ for the
named arguments used here):
https://docs.databricks.com/en/sql/language-manual/functions/ai_query.html ::

    ai_query(endpoint, request,
             modelParameters => named_struct('max_tokens', 64, 'temperature', 0.0),
             returnType => 'STRING', failOnError => false)

``request`` is a STRING for foundation-model endpoints (completions: the prompt; chat:
one user message; embeddings: the text to embed); ``modelParameters`` carries the
generation settings (constant, not data dependent); ``returnType`` is ``STRING`` for
completions and chat, ``ARRAY<FLOAT>`` for embeddings; and with ``failOnError => false``
each row gets ``STRUCT<result: <returnType>, errorMessage: STRING>`` instead of the whole
query failing on the first bad row.

Offline, :func:`register` puts a function with the same name, arguments and result shape
in a local Spark session, so the *same SQL text* runs on ``local[*]`` against the local
workspace. It is a pandas UDF: each Arrow batch of rows is sent to the endpoint with a
bounded number of requests in flight, one request per row (as ``ai_query`` does), 429 and
503 retried with exponential backoff, every other failure recorded in the row's
``errorMessage`` as ``KIND: message``. Token usage goes back to the driver through Spark
accumulators (the result struct has no room for it, on Databricks either).
"""

from __future__ import annotations

import decimal
import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ptdeploy.capacity.loadtest import Task, parse_task
from ptdeploy.errors import ParameterError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

DOCS_URL = "https://docs.databricks.com/en/sql/language-manual/functions/ai_query.html"
FUNCTION_NAME = "ai_query"
RESULT_FIELD = "result"
ERROR_FIELD = "errorMessage"
RETURN_TYPES = {
    Task.COMPLETIONS: "STRING",
    Task.CHAT: "STRING",
    Task.EMBEDDINGS: "ARRAY<FLOAT>",
}
# Model Serving refuses a request payload above 16 MB:
# https://docs.databricks.com/en/machine-learning/model-serving/model-serving-limits.html
MAX_REQUEST_BYTES = 16 * 1024 * 1024
RETRY_STATUSES = (429, 503)
DEFAULT_MAX_RETRIES = 5
DEFAULT_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0

# Error kinds of the local function (the text before ': ' in errorMessage).
NULL_REQUEST = "NULL_REQUEST"
EMPTY_REQUEST = "EMPTY_REQUEST"
INVALID_REQUEST_TYPE = "INVALID_REQUEST_TYPE"
REQUEST_TOO_LARGE = "REQUEST_TOO_LARGE"
THROTTLED = "THROTTLED"


def return_type(task: Task | str) -> str:
    """The ``returnType`` of ``task``: ``STRING`` or ``ARRAY<FLOAT>`` (embeddings)."""
    return RETURN_TYPES[parse_task(task)]


def _sql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _sql_number(name: str, value: float | int) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParameterError(f"{name}: got {value!r}; expected a number.")
    return repr(value)


def model_parameters(
    task: Task | str, *, max_tokens: int | None = None, temperature: float | None = None
) -> dict[str, float | int]:
    """The generation settings ``ai_query`` passes in ``modelParameters`` (none for
    embeddings: an embeddings endpoint takes only its input)."""
    if parse_task(task) is Task.EMBEDDINGS:
        return {}
    params: dict[str, float | int] = {}
    if max_tokens is not None:
        params["max_tokens"] = int(max_tokens)
    if temperature is not None:
        params["temperature"] = float(temperature)
    return params


def call_sql(
    endpoint: str,
    request_sql: str,
    task: Task | str,
    *,
    max_tokens: int | None = None,
    temperature: float | None = None,
) -> str:
    """The ``ai_query(...)`` call, as Databricks documents it, with ``failOnError => false``."""
    params = model_parameters(task, max_tokens=max_tokens, temperature=temperature)
    args = [_sql_string(endpoint), request_sql]
    if params:
        fields = ", ".join(f"{_sql_string(k)}, {_sql_number(k, v)}" for k, v in params.items())
        args.append(f"modelParameters => named_struct({fields})")
    args.append(f"returnType => {_sql_string(return_type(task))}")
    args.append("failOnError => false")
    return f"{FUNCTION_NAME}(\n    " + ",\n    ".join(args) + "\n  )"


# ------------------------------------------------------------------ one row, offline


@dataclass
class RowAnswer:
    """What one row got: a result or an error message, and what it cost."""

    result: Any = None
    error: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    retries: int = 0


def _error(kind: str, message: str) -> str:
    return f"{kind}: {message}"[:4000]


def error_kind(message: str | None) -> str | None:
    """``KIND`` of an ``errorMessage`` written as ``KIND: message`` (else ``OTHER``)."""
    if message is None:
        return None
    head = message.split(":", 1)[0].strip()
    return head if head and head.replace("_", "").isalnum() and head.isupper() else "OTHER"


def request_body(task: Task, request: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The invocation body ``ai_query`` sends for one STRING request."""
    if task is Task.EMBEDDINGS:
        return {"input": [request]}
    body: dict[str, Any] = (
        {"messages": [{"role": "user", "content": request}]}
        if task is Task.CHAT
        else {"prompt": request}
    )
    body.update(params)
    return body


def parse_answer(task: Task, answer: Any) -> tuple[Any, int, int]:
    """(result, input tokens, output tokens) of an OpenAI-shaped answer."""
    usage = answer.get("usage") or {}
    tokens_in = int(usage.get("prompt_tokens") or 0)
    tokens_out = int(usage.get("completion_tokens") or 0)
    if task is Task.EMBEDDINGS:
        return [float(x) for x in answer["data"][0]["embedding"]], tokens_in, tokens_out
    choice = answer["choices"][0]
    if task is Task.CHAT:
        return choice["message"]["content"], tokens_in, tokens_out
    return choice["text"], tokens_in, tokens_out


def _status(err: BaseException) -> int | None:
    from ptdeploy.capacity.loadtest import _status_code

    return _status_code(err)


def _error_code(err: BaseException) -> str:
    code = getattr(err, "error_code", None)
    if isinstance(code, str) and code:
        return code
    status = _status(err)
    return f"HTTP_{status}" if status else type(err).__name__.upper()


def answer_row(
    invoke: Callable[[dict[str, Any]], Any],
    task: Task,
    request: Any,
    params: Mapping[str, Any],
    *,
    max_retries: int = DEFAULT_MAX_RETRIES,
    backoff_s: float = DEFAULT_BACKOFF_S,
    sleep: Callable[[float], None] = time.sleep,
) -> RowAnswer:
    """Send one row's request; never raises: a failure becomes the row's error."""
    if request is None:
        return RowAnswer(error=_error(NULL_REQUEST, "the request is NULL"))
    if not isinstance(request, str):
        return RowAnswer(
            error=_error(
                INVALID_REQUEST_TYPE,
                f"the request must be a STRING for a {task.value} endpoint; got "
                f"{type(request).__name__} {str(request)[:80]!r}",
            )
        )
    if not request.strip():
        return RowAnswer(error=_error(EMPTY_REQUEST, "the request is empty"))
    body = request_body(task, request, params)
    size = len(json.dumps(body).encode())
    if size > MAX_REQUEST_BYTES:
        return RowAnswer(
            error=_error(
                REQUEST_TOO_LARGE,
                f"the request payload is {size} bytes; Model Serving accepts at most "
                f"{MAX_REQUEST_BYTES} (16 MB)",
            )
        )
    retries = 0
    while True:
        try:
            answer = invoke(body)
            result, tokens_in, tokens_out = parse_answer(task, answer)
            return RowAnswer(result, None, tokens_in, tokens_out, retries)
        except Exception as err:  # recorded per row: failOnError => false
            status = _status(err)
            if status in RETRY_STATUSES and retries < max_retries:
                sleep(min(backoff_s * 2**retries, MAX_BACKOFF_S))
                retries += 1
                continue
            if status in RETRY_STATUSES:
                message = _error(THROTTLED, f"HTTP {status} after {retries} retries: {err}")
            elif isinstance(err, (KeyError, IndexError, TypeError, ValueError)) and status is None:
                message = _error("INVALID_RESPONSE", f"unexpected answer shape ({err!r})")
            else:
                message = _error(_error_code(err), str(err))
            return RowAnswer(error=message, retries=retries)


def answer_rows(
    invoke: Callable[[dict[str, Any]], Any],
    task: Task,
    requests: Sequence[Any],
    params: Mapping[str, Any],
    *,
    concurrency: int,
    max_retries: int = DEFAULT_MAX_RETRIES,
    backoff_s: float = DEFAULT_BACKOFF_S,
) -> list[RowAnswer]:
    """Answer ``requests`` in order with at most ``concurrency`` requests in flight."""

    def one(request: Any) -> RowAnswer:
        return answer_row(
            invoke, task, request, params, max_retries=max_retries, backoff_s=backoff_s
        )

    if concurrency <= 1 or len(requests) <= 1:
        return [one(r) for r in requests]
    with ThreadPoolExecutor(max_workers=min(concurrency, len(requests))) as pool:
        return list(pool.map(one, requests))


# ------------------------------------------------------------------ the Spark function


@dataclass(frozen=True)
class Connection:
    """How a Spark worker reaches the endpoint: host and token of the local workspace.

    Pickled into the UDF (it runs in Spark's Python workers); ``repr`` hides the token.
    """

    host: str
    token: str = field(repr=False)
    pool: int = 20


_CLIENTS: dict[tuple[str, int], Any] = {}
_CLIENTS_LOCK = threading.Lock()


def _invoker(conn: Connection, endpoint: str) -> Callable[[dict[str, Any]], Any]:
    """One SDK client per worker process; a single attempt per call (we retry ourselves)."""
    with _CLIENTS_LOCK:
        client = _CLIENTS.get((conn.host, conn.pool))
        if client is None:
            from databricks.sdk import WorkspaceClient

            from ptdeploy.capacity.loadtest import _load_test_client  # the no-retry, big-pool copy

            base = WorkspaceClient(host=conn.host, token=conn.token, auth_type="pat")
            client = _load_test_client(base, conn.pool)
            _CLIENTS[(conn.host, conn.pool)] = client
    path = f"/serving-endpoints/{endpoint}/invocations"
    headers = {"Accept": "application/json", "Content-Type": "application/json"}

    def invoke(body: dict[str, Any]) -> Any:
        return client.api_client.do("POST", path, body=body, headers=headers)

    return invoke


@dataclass
class Counters:
    """Driver-side totals the local function adds to (Spark accumulators)."""

    input_tokens: Any
    output_tokens: Any
    retries: Any

    def values(self) -> dict[str, int]:
        return {
            "input_tokens": int(self.input_tokens.value),
            "output_tokens": int(self.output_tokens.value),
            "retries": int(self.retries.value),
        }


def _plain(value: Any) -> Any:
    """A pandas/numpy cell as a Python value (SQL literals arrive as Decimal, numpy)."""
    if value is None:
        return None
    if isinstance(value, decimal.Decimal):
        return float(value)
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            return value.item()
        except (ValueError, AttributeError):
            return value
    return value


def _is_null(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(value != value)  # NaN, pandas NA
    except (TypeError, ValueError):
        return False


def register(
    spark: SparkSession,
    conn: Connection,
    task: Task | str,
    *,
    concurrency: int,
    max_retries: int = DEFAULT_MAX_RETRIES,
    backoff_s: float = DEFAULT_BACKOFF_S,
) -> Counters:
    """Register ``ai_query`` in ``spark`` (local session only), returning its counters.

    Its result type is fixed at registration (Spark UDFs have one return type), so it is
    registered for ``task``'s ``returnType``; a query asking for another type gets an
    error naming both. ``concurrency`` bounds the requests in flight per Spark task.
    """
    import pandas as pd
    from pyspark.sql.functions import pandas_udf

    task = parse_task(task)
    expected_type = return_type(task)
    spark_type = f"STRUCT<{RESULT_FIELD}: {expected_type}, {ERROR_FIELD}: STRING>"
    sc = spark.sparkContext
    counters = Counters(sc.accumulator(0), sc.accumulator(0), sc.accumulator(0))
    tokens_in_acc, tokens_out_acc, retries_acc = (
        counters.input_tokens,
        counters.output_tokens,
        counters.retries,
    )

    def ai_query(
        endpoint: pd.Series,
        request: pd.Series,
        modelParameters: pd.DataFrame = None,  # noqa: N803 - the SQL argument names
        returnType: pd.Series = None,  # noqa: N803
        failOnError: pd.Series = None,  # noqa: N803
    ) -> pd.DataFrame:
        n = len(request)
        names = set(endpoint.dropna().unique().tolist())
        asked = None if returnType is None else str(returnType.iloc[0]).strip().upper()
        if asked is not None and asked.replace(" ", "") != expected_type.replace(" ", ""):
            raise ParameterError(
                f"ai_query returnType => {asked!r}: this session's ai_query was registered "
                f"for {task.value} ({expected_type!r}); register it for the endpoint's task."
            )
        if len(names) != 1:
            raise ParameterError(f"ai_query endpoint: expected one constant name, got {names}")
        (name,) = names
        params: dict[str, Any] = {}
        if modelParameters is not None and n:
            first = modelParameters.iloc[0]
            params = {k: _plain(v) for k, v in first.items() if not _is_null(v)}
        fail = failOnError is None or bool(failOnError.iloc[0])
        values = [None if _is_null(v) else _plain(v) for v in request.tolist()]
        answers = answer_rows(
            _invoker(conn, name),
            task,
            values,
            params,
            concurrency=concurrency,
            max_retries=max_retries,
            backoff_s=backoff_s,
        )
        if fail:
            failed = next((a for a in answers if a.error is not None), None)
            if failed is not None:
                raise RuntimeError(
                    f"ai_query failed on a row (failOnError => true): {failed.error}"
                )
        tokens_in_acc.add(sum(a.input_tokens for a in answers))
        tokens_out_acc.add(sum(a.output_tokens for a in answers))
        retries_acc.add(sum(a.retries for a in answers))
        return pd.DataFrame(
            {
                RESULT_FIELD: [a.result for a in answers],
                ERROR_FIELD: [a.error for a in answers],
            }
        )

    # Spark infers a pandas UDF's kind from its type hints, resolved in this module's
    # globals; this module postpones annotations and imports pandas lazily: give real types.
    ai_query.__annotations__ = {
        "endpoint": pd.Series,
        "request": pd.Series,
        "modelParameters": pd.DataFrame,
        "returnType": pd.Series,
        "failOnError": pd.Series,
        "return": pd.DataFrame,
    }
    spark.udf.register(FUNCTION_NAME, pandas_udf(ai_query, spark_type))
    return counters
