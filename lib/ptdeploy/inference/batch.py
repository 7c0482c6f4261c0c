"""Batch inference over a table: ``ai_query`` in Spark SQL, every row answered or its error kept.

The same SQL text runs on both targets (:func:`batch_sql`)::

    SELECT *, ai_query('<endpoint>', <request>, modelParameters => ..., returnType => ...,
                       failOnError => false) AS response
    FROM batch_input

* ``databricks``: the cluster's Spark session and its built-in ``ai_query``; input and
  output are Unity Catalog tables, the output a Delta table.
* ``local``: Spark in ``local[*]`` (:func:`spark_session`) with the offline ``ai_query``
  of :mod:`ptdeploy.inference.ai_query` registered, calling the local workspace's endpoint. Input and
  output are Parquet paths, or table names kept as Parquet under the state directory's
  ``spark-warehouse`` (:func:`local_table_path`): no Delta jars are reachable offline.

Nothing is lost (:func:`run_batch`): rows are sent in commits of ``rows_per_commit`` rows,
each appended to the output when done; a rerun over the same output skips the ids already
there (resume after a crash), and :func:`check_output` verifies rows in = rows out, each
with a result or an error. :class:`BatchResult` carries the summary (rows, tokens in/out,
errors by kind, elapsed) and :func:`size_with_planner` puts the measured rates next to
what the endpoint's provisioned throughput allows and what the planner would choose for
the batch in a target time. Progress goes through a callback (``progress(done, total)``);
the notebook draws the bar.
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ptdeploy
from ptdeploy.capacity import planner
from ptdeploy.capacity.loadtest import Task, parse_task
from ptdeploy.clock import Clock, MonotonicClock
from ptdeploy.errors import BatchError, ParameterError, ThroughputError
from ptdeploy.inference import ai_query
from ptdeploy.targets import Target

if TYPE_CHECKING:
    from databricks.sdk import WorkspaceClient
    from pyspark.sql import DataFrame, SparkSession

INPUT_VIEW = "batch_input"
RESPONSE_COLUMN = "response"
FAILED_ROWS = ("keep", "fail")
DEFAULT_ROWS_PER_COMMIT = 1000
_TEMPLATE_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
# One output token per generated row is unknown before it runs: the planner's estimate
# of a row's cost when the endpoint's usage is not measured (Databricks' ai_query does
# not return it) is its characters / 4 in, max_tokens out.
CHARS_PER_TOKEN = 4

Progress = Callable[[int, int], None]


# ------------------------------------------------------------------ Spark and tables


def spark_session(target: Target | str, *, app_name: str = "ptdeploy-batch") -> SparkSession:
    """The Spark session of the target.

    ``databricks``: the cluster's session (a notebook's ``spark``). ``local``: one
    ``local[*]`` session, UI off, Spark's Python workers on this interpreter, its
    warehouse in the state directory. Reused if one is active.
    """
    from pyspark.sql import SparkSession

    if Target(target) is Target.DATABRICKS:
        return SparkSession.builder.getOrCreate()
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    # pyspark 4.3 warns on every pandas UDF that pandas >= 3 is not fully supported; the
    # pandas UDF paths used here are covered by tests/test_batch.py on the pinned pandas.
    warnings.filterwarnings(
        "ignore", message="PySpark does not yet fully support pandas", category=FutureWarning
    )
    # Spark's Python workers must import pandas/pyarrow/ptdeploy: this interpreter's.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    lib = str(Path(ptdeploy.__file__).resolve().parents[1])  # the folder holding ptdeploy/
    path = os.environ.get("PYTHONPATH", "")
    if lib not in path.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (lib, path) if p)
    spark = (
        SparkSession.builder.master("local[*]")
        .appName(app_name)
        .config("spark.driver.bindAddress", "127.0.0.1")  # loopback only, like the workspace
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.sql.warehouse.dir", str(_warehouse()))
        .config("spark.driver.memory", "1g")
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def _warehouse() -> Path:
    from ptdeploy import state

    return state.state_dir() / "spark-warehouse"


def is_path(name: str) -> bool:
    """A Parquet path (``/``, ``~``, ``.parquet``) rather than a table name."""
    return "/" in name or name.startswith("~") or name.endswith(".parquet")


def local_table_path(name: str) -> Path:
    """Where the local target keeps table ``name`` (``main.default.docs``): Parquet under
    ``<state>/spark-warehouse/main/default/docs``."""
    parts = name.split(".")
    if not all(re.fullmatch(r"[A-Za-z0-9_]+", p) for p in parts) or len(parts) > 3:
        raise ParameterError(
            f"table {name!r}: expected a Parquet path or a table name of one to three "
            "parts of letters, digits and '_' (catalog.schema.table)."
        )
    return _warehouse().joinpath(*parts)


def _location(name: str, target: Target) -> str | None:
    """The Parquet location of ``name`` on the local target (None: a catalog table)."""
    if target is Target.DATABRICKS:
        return None
    return str(Path(name).expanduser()) if is_path(name) else str(local_table_path(name))


def table_exists(spark: SparkSession, name: str, target: Target | str) -> bool:
    location = _location(name, Target(target))
    if location is None:
        return bool(spark.catalog.tableExists(name))
    return Path(location).exists() and any(
        p.name.endswith(".parquet") for p in Path(location).rglob("*")
    )


def read_table(spark: SparkSession, name: str, target: Target | str) -> DataFrame:
    target = Target(target)
    if not table_exists(spark, name, target):
        where = _location(name, target) or "the catalog"
        raise ParameterError(f"table {name!r} does not exist ({where}).")
    location = _location(name, target)
    return spark.table(name) if location is None else spark.read.parquet(location)


def append_table(df: DataFrame, name: str, target: Target | str) -> None:
    """Append ``df``: a Delta table on Databricks, Parquet offline. Each append is one
    Spark job commit: a crash leaves the rows of earlier appends, never half a commit."""
    location = _location(name, Target(target))
    if location is None:
        df.write.format("delta").mode("append").saveAsTable(name)
    else:
        df.write.mode("append").parquet(location)


def write_table(spark: SparkSession, rows: list[dict[str, Any]], name: str, target: Any) -> None:
    """Write ``rows`` as a new table (a sample input for a rehearsal)."""
    import pandas as pd

    df = spark.createDataFrame(pd.DataFrame(rows))
    location = _location(name, Target(target))
    if location is None:
        df.write.format("delta").mode("overwrite").saveAsTable(name)
    else:
        df.write.mode("overwrite").parquet(location)


# ------------------------------------------------------------------ the job


@dataclass(frozen=True)
class BatchSpec:
    """What to send: from which table, to which endpoint, into which table."""

    endpoint: str
    input: str
    output: str
    id_column: str
    task: Task
    request_column: str | None = None
    prompt_template: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    row_limit: int | None = None
    failed_rows: str = "keep"
    concurrency: int = 8
    rows_per_commit: int = DEFAULT_ROWS_PER_COMMIT

    def __post_init__(self) -> None:
        object.__setattr__(self, "task", parse_task(self.task))
        if bool(self.request_column) == bool(self.prompt_template):
            raise ParameterError(
                "request_column / prompt_template: give exactly one: the column that is the "
                "request, or a template such as 'Summarize: {text}' built from columns "
                f"(got request_column={self.request_column!r}, "
                f"prompt_template={self.prompt_template!r})."
            )
        if self.failed_rows not in FAILED_ROWS:
            raise ParameterError(
                f"failed_rows: got {self.failed_rows!r}; expected one of {', '.join(FAILED_ROWS)}."
            )
        if self.input == self.output:
            raise ParameterError(
                f"output_table: got {self.output!r}, the input table; write to another table."
            )
        if self.task is Task.EMBEDDINGS and self.max_tokens is not None:
            object.__setattr__(self, "max_tokens", None)  # embeddings take only their input
            object.__setattr__(self, "temperature", None)


def _quote(column: str) -> str:
    return "`" + column.replace("`", "``") + "`"


def request_sql(spec: BatchSpec, columns: list[str]) -> str:
    """The ``request`` argument: a column, or the template as a SQL ``concat``."""
    if spec.request_column:
        _check_columns([spec.request_column], columns, "request_column")
        return _quote(spec.request_column)
    template = spec.prompt_template or ""
    fields = _TEMPLATE_FIELD.findall(template)
    if not fields:
        raise ParameterError(
            f"prompt_template: got {template!r}; expected at least one {{column}} "
            "placeholder, e.g. 'Summarize: {text}'."
        )
    _check_columns(fields, columns, "prompt_template")
    parts: list[str] = []
    pos = 0
    for match in _TEMPLATE_FIELD.finditer(template):
        if match.start() > pos:
            parts.append(ai_query._sql_string(template[pos : match.start()]))
        parts.append(f"CAST({_quote(match.group(1))} AS STRING)")
        pos = match.end()
    if pos < len(template):
        parts.append(ai_query._sql_string(template[pos:]))
    return parts[0] if len(parts) == 1 else f"concat({', '.join(parts)})"


def _check_columns(wanted: list[str], columns: list[str], field_name: str) -> None:
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise ParameterError(
            f"{field_name}: column(s) {', '.join(map(repr, missing))} not in the input table; "
            f"its columns are {', '.join(columns)}."
        )


def batch_sql(spec: BatchSpec, columns: list[str], source: str = INPUT_VIEW) -> str:
    """The SQL text of the batch, identical on Databricks and on local Spark."""
    call = ai_query.call_sql(
        spec.endpoint,
        request_sql(spec, columns),
        spec.task,
        max_tokens=spec.max_tokens,
        temperature=spec.temperature,
    )
    return f"SELECT *, {call} AS {RESPONSE_COLUMN}\nFROM {source}"


@dataclass
class BatchResult:
    """What a batch run did, and the output table's totals after it."""

    spec: BatchSpec
    sql: str
    rows_in: int  # input rows (after row_limit)
    rows_skipped: int  # already in the output (resumed)
    rows_sent: int  # answered by this run
    rows_out: int  # output rows after the run
    rows_ok: int
    rows_error: int
    errors_by_kind: dict[str, int]
    elapsed_s: float
    input_tokens: int | None = None  # measured (local); None on Databricks
    output_tokens: int | None = None
    retries: int | None = None
    commits: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rows_per_second(self) -> float | None:
        return self.rows_sent / self.elapsed_s if self.rows_sent and self.elapsed_s > 0 else None

    @property
    def tokens_per_second(self) -> float | None:
        if self.input_tokens is None or not self.rows_sent or self.elapsed_s <= 0:
            return None
        return (self.input_tokens + (self.output_tokens or 0)) / self.elapsed_s

    @property
    def complete(self) -> bool:
        """Every input row is in the output, with a result or an error."""
        return self.rows_out == self.rows_in and self.rows_ok + self.rows_error == self.rows_out

    def summary(self) -> dict[str, Any]:
        return {
            "endpoint": self.spec.endpoint,
            "task": self.spec.task.value,
            "input": self.spec.input,
            "output": self.spec.output,
            "rows_in": self.rows_in,
            "rows_skipped": self.rows_skipped,
            "rows_sent": self.rows_sent,
            "rows_out": self.rows_out,
            "rows_ok": self.rows_ok,
            "rows_error": self.rows_error,
            "errors_by_kind": dict(self.errors_by_kind),
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "retries": self.retries,
            "elapsed_s": round(self.elapsed_s, 3),
            "rows_per_second": _round(self.rows_per_second),
            "tokens_per_second": _round(self.tokens_per_second),
            "commits": self.commits,
            "complete": self.complete,
        }

    def explain(self) -> list[str]:
        lines = [
            f"{self.rows_in} input rows -> {self.rows_out} output rows "
            f"({self.rows_ok} with a result, {self.rows_error} with an error); "
            f"{self.rows_skipped} already done before this run, {self.rows_sent} sent now "
            f"in {self.commits} commit(s) in {self.elapsed_s:.1f} s.",
        ]
        if self.rows_per_second is not None:
            rate = f"{self.rows_per_second:.1f} rows/s"
            if self.tokens_per_second is not None:
                rate += (
                    f", {self.tokens_per_second:.0f} tokens/s ({self.input_tokens} in, "
                    f"{self.output_tokens} out, {self.retries} retries of 429/503)"
                )
            lines.append(f"Rate: {rate}.")
        for kind, count in sorted(self.errors_by_kind.items(), key=lambda kv: -kv[1]):
            lines.append(f"Errors: {count} x {kind}")
        lines.append(
            "Nothing lost: every input row is in the output with a result or an error."
            if self.complete
            else "INCOMPLETE: the output does not hold every input row once; rerun to resume."
        )
        return lines


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def prepare_input(
    spark: SparkSession, spec: BatchSpec, target: Target | str
) -> tuple[DataFrame, int]:
    """The input rows (first ``row_limit`` by id) and their count; ids checked unique
    and non-null."""
    from pyspark.sql import functions as F

    df = read_table(spark, spec.input, target)
    _check_columns([spec.id_column], df.columns, "id_column")
    if RESPONSE_COLUMN in df.columns:
        raise ParameterError(
            f"input table {spec.input!r} already has a column {RESPONSE_COLUMN!r}: the output "
            "adds it; rename the input column."
        )
    if spec.row_limit is not None:
        df = df.orderBy(spec.id_column).limit(spec.row_limit)
    stats = df.agg(
        F.count(F.lit(1)).alias("rows"),
        F.count_distinct(F.col(spec.id_column)).alias("ids"),
        F.count(F.col(spec.id_column)).alias("non_null"),
    ).first()
    if stats["non_null"] != stats["rows"] or stats["ids"] != stats["rows"]:
        raise ParameterError(
            f"id_column {spec.id_column!r}: {stats['rows']} rows but {stats['ids']} distinct "
            f"non-null ids; resume needs a unique, non-null id per row."
        )
    return df, int(stats["rows"])


def run_batch(
    spark: SparkSession,
    spec: BatchSpec,
    target: Target | str,
    *,
    connection: ai_query.Connection | None = None,
    progress: Progress | None = None,
    clock: Clock | None = None,
) -> BatchResult:
    """Send every input row not yet in the output through ``ai_query``; append the answers.

    Local target: ``connection`` (host and token of the local workspace) is required and
    ``ai_query`` is registered in ``spark`` for the task. Raises
    :class:`~ptdeploy.errors.BatchError` at the end when ``failed_rows="fail"`` and some
    rows hold an error (the output is written either way).
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    target = Target(target)
    counters = None
    partitions = 1
    if target is Target.LOCAL:
        if connection is None:
            raise ParameterError("connection: the local target needs the workspace host/token.")
        partitions = max(1, min(spark.sparkContext.defaultParallelism, spec.concurrency))
        counters = ai_query.register(
            spark, connection, spec.task, concurrency=math.ceil(spec.concurrency / partitions)
        )
    clock = clock or MonotonicClock()
    started = clock.time()
    source, rows_in = prepare_input(spark, spec, target)
    sql = batch_sql(spec, source.columns)
    pending = source
    if table_exists(spark, spec.output, target):
        done = read_table(spark, spec.output, target).select(spec.id_column).distinct()
        pending = source.join(done, on=spec.id_column, how="left_anti")
    # Commits of at most about rows_per_commit rows, by a hash of the id: no global sort,
    # the same split whatever the partitioning (and smaller commits when resuming).
    commits = max(1, math.ceil(rows_in / max(1, spec.rows_per_commit)))
    chunk = "__ptdeploy_commit"
    keyed = pending.withColumn(
        chunk, F.pmod(F.xxhash64(F.col(spec.id_column)), F.lit(commits))
    ).persist(StorageLevel.MEMORY_AND_DISK)
    sizes = {r[chunk]: r["count"] for r in keyed.groupBy(chunk).count().collect()}
    to_send = sum(sizes.values())
    rows_skipped = rows_in - to_send
    sent = 0
    if progress:
        progress(0, to_send)
    try:
        for index in sorted(sizes):
            part = keyed.where(F.col(chunk) == index).drop(chunk).repartition(partitions)
            part.createOrReplaceTempView(INPUT_VIEW)
            append_table(spark.sql(sql), spec.output, target)
            sent += sizes[index]
            if progress:
                progress(sent, to_send)
    finally:
        keyed.unpersist()
        spark.catalog.dropTempView(INPUT_VIEW)
    elapsed = clock.time() - started
    result = _totals(spark, spec, sql, rows_in, rows_skipped, sent, elapsed, target)
    result.commits = len(sizes)
    if counters is not None:
        values = counters.values()
        result.input_tokens = values["input_tokens"]
        result.output_tokens = values["output_tokens"]
        result.retries = values["retries"]
    if spec.failed_rows == "fail" and result.rows_error:
        raise BatchError(
            f"{result.rows_error} of {result.rows_out} rows failed "
            f"({_kinds(result.errors_by_kind)}); failed_rows='fail'. They are in "
            f"{spec.output!r} with their {RESPONSE_COLUMN}.{ai_query.ERROR_FIELD}."
        )
    return result


def _kinds(errors: dict[str, int]) -> str:
    return ", ".join(f"{n} x {k}" for k, n in sorted(errors.items(), key=lambda kv: -kv[1]))


def _totals(
    spark: SparkSession,
    spec: BatchSpec,
    sql: str,
    rows_in: int,
    skipped: int,
    sent: int,
    elapsed: float,
    target: Target,
) -> BatchResult:
    """Count the output table: rows, results, errors by kind."""
    from pyspark.sql import functions as F

    out = read_table(spark, spec.output, target)
    error = F.col(f"{RESPONSE_COLUMN}.{ai_query.ERROR_FIELD}")
    grouped = (
        out.groupBy(F.substring_index(error, ":", 1).alias("head"), error.isNull().alias("ok"))
        .count()
        .collect()
    )
    rows_ok = sum(r["count"] for r in grouped if r["ok"])
    errors: dict[str, int] = {}
    for r in grouped:
        if not r["ok"]:
            kind = ai_query.error_kind(r["head"]) or "OTHER"
            errors[kind] = errors.get(kind, 0) + r["count"]
    rows_out = sum(r["count"] for r in grouped)
    return BatchResult(
        spec=spec,
        sql=sql,
        rows_in=rows_in,
        rows_skipped=skipped,
        rows_sent=sent,
        rows_out=rows_out,
        rows_ok=rows_ok,
        rows_error=rows_out - rows_ok,
        errors_by_kind=errors,
        elapsed_s=elapsed,
    )


def check_output(spark: SparkSession, spec: BatchSpec, target: Target | str) -> dict[str, int]:
    """Rows in = rows out, one output row per id, each with a result or an error.

    Raises :class:`~ptdeploy.errors.BatchError` naming what is off.
    """
    from pyspark.sql import functions as F

    source_rows, rows_in = prepare_input(spark, spec, target)
    source = source_rows.select(spec.id_column)
    out = read_table(spark, spec.output, target)
    response = F.col(RESPONSE_COLUMN)
    stats = out.agg(
        F.count(F.lit(1)).alias("rows"),
        F.count_distinct(F.col(spec.id_column)).alias("ids"),
        F.sum(
            F.when(
                response[ai_query.RESULT_FIELD].isNull() & response[ai_query.ERROR_FIELD].isNull(),
                1,
            ).otherwise(0)
        ).alias("empty"),
    ).first()
    missing = source.join(out.select(spec.id_column), spec.id_column, "left_anti").count()
    counts = {
        "rows_in": rows_in,
        "rows_out": int(stats["rows"]),
        "distinct_ids": int(stats["ids"]),
        "missing": missing,
        "neither_result_nor_error": int(stats["empty"] or 0),
    }
    problems = []
    if counts["missing"]:
        problems.append(f"{missing} input rows are not in the output (rerun to resume)")
    if counts["distinct_ids"] != counts["rows_out"]:
        problems.append(f"{counts['rows_out'] - counts['distinct_ids']} duplicate output rows")
    if counts["neither_result_nor_error"]:
        problems.append(f"{counts['neither_result_nor_error']} rows have neither result nor error")
    if problems:
        raise BatchError(f"output {spec.output!r}: " + "; ".join(problems) + ".")
    return counts


# ------------------------------------------------------------------ sized by the planner


@dataclass(frozen=True)
class Sizing:
    """Measured rates next to what the endpoint allows and what the planner would pick."""

    rows: int
    rows_per_second: float
    tokens_per_row: float
    tokens_measured: bool
    tokens_per_second: float
    max_provisioned_throughput: int | None
    allowed_rows_per_second: float | None
    target_minutes: float
    plan: planner.CapacityPlan | None
    note: str = ""

    def explain(self) -> list[str]:
        how = "measured" if self.tokens_measured else "estimated (chars/4 in + max_tokens out)"
        lines = [
            f"Measured: {self.rows_per_second:.1f} rows/s, {self.tokens_per_second:.0f} tokens/s "
            f"({self.tokens_per_row:.1f} tokens per row, {how}).",
        ]
        if self.allowed_rows_per_second is not None:
            share = self.tokens_per_second / self.max_provisioned_throughput  # type: ignore[operator]
            lines.append(
                f"Provisioned: max {self.max_provisioned_throughput} tokens/s allows about "
                f"{self.allowed_rows_per_second:.1f} rows/s for these rows; the batch used "
                f"{share:.0%} of it."
            )
        eta = self.rows / self.rows_per_second / 60 if self.rows_per_second else float("inf")
        lines.append(
            f"At the measured rate the {self.rows} rows take {eta:.1f} min "
            f"(target {self.target_minutes:g} min)."
        )
        if self.plan is not None:
            lines.append(
                f"Planner, for {self.rows} rows in {self.target_minutes:g} min "
                f"({self.plan.workload.peak_requests_per_second:.2f} rows/s):"
            )
            lines.extend("  " + line for line in self.plan.explain())
        if self.note:
            lines.append(self.note)
        return lines

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "rows_per_second": round(self.rows_per_second, 3),
            "tokens_per_second": round(self.tokens_per_second, 3),
            "tokens_per_row": round(self.tokens_per_row, 3),
            "tokens_measured": self.tokens_measured,
            "max_provisioned_throughput": self.max_provisioned_throughput,
            "allowed_rows_per_second": _round(self.allowed_rows_per_second),
            "target_minutes": self.target_minutes,
            "planned": self.plan.served_entity_fields() if self.plan else None,
            "note": self.note,
        }


def size_with_planner(
    w: WorkspaceClient,
    result: BatchResult,
    *,
    target_minutes: float,
    headroom: float = planner.DEFAULT_HEADROOM,
    mean_request_chars: float | None = None,
) -> Sizing:
    """The measured rates against the endpoint's provisioned throughput, and the planner's
    min/max for the same batch (``result.rows_in`` rows) in ``target_minutes``."""
    from ptdeploy.capacity import capacity_check
    from ptdeploy.serving import endpoints, optimization

    spec = result.spec
    rps = result.rows_per_second or 0.0
    measured = result.input_tokens is not None and result.rows_sent > 0
    if measured:
        tokens_in = result.input_tokens / result.rows_sent  # type: ignore[operator]
        tokens_out = (result.output_tokens or 0) / result.rows_sent
    else:
        tokens_in = (mean_request_chars or 0) / CHARS_PER_TOKEN
        tokens_out = float(spec.max_tokens or 0)
    per_row = max(tokens_in + tokens_out, 1.0)
    tps = result.tokens_per_second if measured else rps * per_row
    max_pt = allowed = None
    plan = None
    note = ""
    try:
        ep = endpoints.get_endpoint(w, spec.endpoint)
        deployed = capacity_check.deployed_throughput(ep)
        max_pt = deployed.max_provisioned_throughput
        allowed = max_pt / per_row
        entity, version = deployed.entities[0]
        info = optimization.get_optimization_info(w, entity, version)
        if info.throughput_chunk_size:
            workload = planner.Workload(
                peak_requests_per_second=result.rows_in / (target_minutes * 60),
                rest_requests_per_second=0.0,
                mean_input_tokens=tokens_in if tokens_in + tokens_out > 0 else 1.0,
                mean_output_tokens=tokens_out,
            )
            plan = planner.plan_capacity(
                workload, info.throughput_chunk_size, headroom=headroom, scale_to_zero=True
            )
        else:
            note = f"no planner proposal: {info.describe()}"
    except (ThroughputError, ParameterError) as exc:
        note = f"no provisioned tokens/s to compare with: {exc}"
    return Sizing(
        rows=result.rows_in,
        rows_per_second=rps,
        tokens_per_row=per_row,
        tokens_measured=measured,
        tokens_per_second=tps or 0.0,
        max_provisioned_throughput=max_pt,
        allowed_rows_per_second=allowed,
        target_minutes=target_minutes,
        plan=plan,
        note=note,
    )


def tqdm_progress(bar: Any) -> Progress:
    """A ``progress(done, total)`` callback that moves a tqdm bar the caller owns."""

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
            bar.refresh()
        bar.update(done - bar.n)

    return update


# ------------------------------------------------------------------ notebook steps

BATCH_CATALOG = "main"
BATCH_SCHEMA = "default"
# Databricks needs a model_type for embedding models; the local rehearsal deploys with it.
BATCH_EMBEDDING_MODEL_TYPE = "gte-large"
SAMPLE_TEXTS = (
    "Provisioned throughput reserves tokens per second for a model serving endpoint.",
    "A cat sleeps on the warm windowsill all afternoon.",
    "Spark runs the same SQL on a laptop and on a cluster.",
    "Embeddings place sentences with similar meanings close together.",
    "The invoice is due at the end of the month.",
    "Scale to zero saves money when an endpoint is idle.",
)


@dataclass
class BatchEndpoint:
    """The endpoint a batch runs against: its name, task and whether this run deployed it."""

    name: str
    task: Task
    deployed_now: bool


def prepare_endpoint(p: Any, w: WorkspaceClient) -> BatchEndpoint:
    """The endpoint, ready, and its task (asked from the endpoint when ``task`` is auto).

    Offline with ``deploy_if_missing``, a missing endpoint is deployed first from
    ``model_source`` (one chunk), so the notebook runs on its own.
    """
    from ptdeploy.capacity import loadtest
    from ptdeploy.errors import EndpointNotFoundError
    from ptdeploy.serving import endpoints

    deployed_now = False
    try:
        endpoints.get_endpoint(w, p.endpoint_name)
    except EndpointNotFoundError as exc:
        if not p.deploy_if_missing:
            raise EndpointNotFoundError(
                f"{exc} Deploy it with a deployment notebook first, or (target 'local') set "
                f"deploy_if_missing=true to deploy model_source={p.model_source!r} now."
            ) from exc
        _deploy_for_batch(p, w)
        deployed_now = True
    ep = endpoints.wait_until_ready(w, p.endpoint_name, timeout=p.wait_timeout_minutes * 60)
    task = loadtest.detect_task(w, p.endpoint_name) if p.task == "auto" else parse_task(p.task)
    print(f"endpoint {p.endpoint_name}: {endpoints.describe_state(ep)} | task {task.value}")
    return BatchEndpoint(p.endpoint_name, task, deployed_now)


def _deploy_for_batch(p: Any, w: WorkspaceClient) -> None:
    """Register ``p.model_source`` and serve it with one chunk (local rehearsal only)."""
    from ptdeploy import names
    from ptdeploy.models import model_logging, registry, sources
    from ptdeploy.serving import optimization, throughput
    from ptdeploy.templates import flow

    if p.target != Target.LOCAL.value:  # the spec refuses it too; never deploy by accident
        raise ParameterError("deploy_if_missing=true applies to target 'local' only.")
    loaded = sources.load_model(p.model_source)
    embeddings = loaded.kind == "encoder"
    task = Task.EMBEDDINGS if embeddings else Task.COMPLETIONS
    if p.task != "auto":
        task = parse_task(p.task)
    logged = model_logging.log_model(
        loaded, task=task.value, model_type=BATCH_EMBEDDING_MODEL_TYPE if embeddings else None
    )
    model = p.endpoint_name.replace("-", "_").lower()
    name = names.registered_model_name(BATCH_CATALOG, BATCH_SCHEMA, model)
    registered = registry.register(logged.model_uri, name)
    info = optimization.optimizable_info(w, name, registered.version)
    plan = throughput.plan_from_info(info, 1, 1)
    print(f"registered {loaded.source.describe()} ({task.value}) as {name} v{registered.version}")
    flow.serve(p, w, name, registered.version, plan)


def spec_from_params(p: Any, endpoint: BatchEndpoint) -> BatchSpec:
    return BatchSpec(
        endpoint=endpoint.name,
        input=p.input_table,
        output=p.output_table,
        id_column=p.id_column,
        task=endpoint.task,
        request_column=p.request_column,
        prompt_template=p.prompt_template,
        max_tokens=p.max_tokens,
        temperature=p.temperature,
        row_limit=p.row_limit,
        failed_rows=p.failed_rows,
        concurrency=p.concurrency,
        rows_per_commit=p.rows_per_commit,
    )


def start_spark(p: Any) -> SparkSession:
    """The target's Spark session, with its start-up time printed."""
    started = time.monotonic()
    spark = spark_session(p.target)
    print(
        f"Spark {spark.version} ({spark.sparkContext.master}) in {time.monotonic() - started:.1f} s"
    )
    return spark


def ensure_sample_input(p: Any, spark: SparkSession, spec: BatchSpec) -> bool:
    """Offline rehearsal: write ``sample_rows`` rows to a missing input (two of them
    malformed, to show per-row errors). Returns whether it wrote one."""
    if not p.sample_rows or table_exists(spark, spec.input, p.target):
        return False
    column = (
        spec.request_column or (_TEMPLATE_FIELD.findall(spec.prompt_template or "") or ["text"])[0]
    )
    rows: list[dict[str, Any]] = [
        {spec.id_column: i, column: f"{SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)]} ({i})"}
        for i in range(p.sample_rows)
    ]
    if len(rows) >= 10:
        rows[3][column] = ""
        rows[7][column] = None
    write_table(spark, rows, spec.input, p.target)
    print(f"wrote a sample input of {len(rows)} rows to {spec.input}")
    return True


def show_sql(spark: SparkSession, spec: BatchSpec, target: Any) -> str:
    """Print and return the SQL text the batch runs (the same on both targets)."""
    sql = batch_sql(spec, read_table(spark, spec.input, target).columns)
    print(sql)
    return sql


def connection_for(w: WorkspaceClient, target: Any) -> ai_query.Connection | None:
    """Host and token for the offline ai_query (None on Databricks: the built-in is used)."""
    if Target(target) is Target.DATABRICKS:
        return None
    return ai_query.Connection(w.config.host, w.config.token)


def run_step(
    p: Any, spark: SparkSession, w: WorkspaceClient, spec: BatchSpec, progress: Progress | None
) -> BatchResult:
    """Run the batch, check the output, print the summary."""
    result = run_batch(
        spark, spec, p.target, connection=connection_for(w, p.target), progress=progress
    )
    check_output(spark, spec, p.target)
    print("\n".join(result.explain()))
    return result


def sizing_step(p: Any, w: WorkspaceClient, spark: SparkSession, result: BatchResult) -> Sizing:
    """Measured rates against provisioned throughput, and the planner's proposal."""
    from pyspark.sql import functions as F

    chars = None
    if result.input_tokens is None:  # Databricks: estimate from the request lengths
        source, _ = prepare_input(spark, result.spec, p.target)
        column = result.spec.request_column or source.columns[0]
        chars = source.agg(F.avg(F.length(F.col(column)))).first()[0]
    sizing = size_with_planner(
        w, result, target_minutes=p.target_minutes, headroom=p.headroom, mean_request_chars=chars
    )
    print("\n".join(sizing.explain()))
    return sizing


def summary(result: BatchResult, sizing: Sizing | None, endpoint: BatchEndpoint) -> dict[str, Any]:
    """The notebook's summary (read back by ``ptdeploy run`` and a job's next task)."""
    return {
        **result.summary(),
        "deployed_now": endpoint.deployed_now,
        "sql": result.sql,
        "sizing": sizing.as_dict() if sizing else None,
    }
