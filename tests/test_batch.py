"""Batch inference with ai_query: the SQL, the offline function, and whole batches on local Spark.

The quick tests check the SQL text and the per-row behaviour of the offline ``ai_query``
(retries, errors) with an injected ``invoke``. The slow ones run real batches through one
shared local Spark session against the local workspace: tiny-llama completions and
all-MiniLM embeddings endpoints, malformed rows included, then a resume.
"""

from __future__ import annotations

import pytest
from databricks.sdk.errors import InvalidParameterValue, TemporarilyUnavailable, TooManyRequests
from ptdeploy.capacity.loadtest import Task
from ptdeploy.errors import BatchError, ParameterError
from ptdeploy.inference import ai_query, batch

# ------------------------------------------------------------------ the SQL text


def spec(**kwargs) -> batch.BatchSpec:
    values = dict(
        endpoint="docs-embeddings",
        input="main.default.docs",
        output="main.default.docs_embedded",
        id_column="id",
        task="embeddings",
        request_column="text",
    )
    values.update(kwargs)
    return batch.BatchSpec(**values)


def test_embeddings_sql_is_the_documented_call():
    sql = batch.batch_sql(spec(), ["id", "text"])
    assert sql == (
        "SELECT *, ai_query(\n"
        "    'docs-embeddings',\n"
        "    `text`,\n"
        "    returnType => 'ARRAY<FLOAT>',\n"
        "    failOnError => false\n"
        "  ) AS response\n"
        "FROM batch_input"
    )


def test_completions_sql_passes_generation_settings_in_model_parameters():
    s = spec(
        endpoint="llama",
        task="completions",
        request_column=None,
        prompt_template="Summarize: {text} ({id})",
        max_tokens=32,
        temperature=0.0,
    )
    sql = batch.batch_sql(s, ["id", "text"])
    assert "concat('Summarize: ', CAST(`text` AS STRING), ' (', CAST(`id` AS STRING), ')')" in sql
    assert "modelParameters => named_struct('max_tokens', 32, 'temperature', 0.0)" in sql
    assert "returnType => 'STRING'" in sql and "failOnError => false" in sql


def test_quotes_in_names_and_templates_cannot_break_the_sql():
    s = spec(request_column=None, prompt_template="it's {text}")
    assert "concat('it\\'s ', CAST(`text` AS STRING))" in batch.batch_sql(s, ["id", "text"])


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(request_column=None), "request_column / prompt_template"),
        (dict(prompt_template="{text}"), "request_column / prompt_template"),
        (dict(failed_rows="ignore"), "failed_rows"),
        (dict(output="main.default.docs"), "output_table"),
        (dict(task="rerank"), "task"),
    ],
)
def test_bad_specs_name_the_field(kwargs, field):
    with pytest.raises(ParameterError, match=field):
        spec(**kwargs)


def test_unknown_columns_are_named_with_the_table_columns():
    with pytest.raises(ParameterError, match=r"'body'.*columns are id, text"):
        batch.batch_sql(spec(request_column="body"), ["id", "text"])
    with pytest.raises(ParameterError, match=r"'title'"):
        batch.batch_sql(spec(request_column=None, prompt_template="{title}"), ["id", "text"])


# ------------------------------------------------------------------ one row


def embedding_answer(tokens: int = 3) -> dict:
    return {"data": [{"embedding": [0.5, 0.25]}], "usage": {"prompt_tokens": tokens}}


def scripted(*outcomes):
    """An invoke that raises or returns each outcome in turn, recording the bodies."""
    calls = []

    def invoke(body):
        calls.append(body)
        outcome = outcomes[min(len(calls), len(outcomes)) - 1]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    invoke.calls = calls
    return invoke


def test_throttled_rows_are_retried_with_backoff():
    waits = []
    invoke = scripted(
        TooManyRequests("slow down"), TemporarilyUnavailable("busy"), embedding_answer()
    )
    answer = ai_query.answer_row(
        invoke, Task.EMBEDDINGS, "hello", {}, backoff_s=0.5, sleep=waits.append
    )
    assert answer.result == [0.5, 0.25] and answer.error is None
    assert answer.retries == 2 and waits == [0.5, 1.0]
    assert invoke.calls == [{"input": ["hello"]}] * 3


def test_throttling_past_the_retries_is_the_rows_error():
    waits = []
    answer = ai_query.answer_row(
        scripted(TooManyRequests("slow down")),
        Task.EMBEDDINGS,
        "hello",
        {},
        max_retries=3,
        sleep=waits.append,
    )
    assert answer.result is None and answer.error.startswith("THROTTLED: HTTP 429 after 3 retries")
    assert len(waits) == 3


def test_a_refused_request_is_not_retried_and_keeps_the_error_code():
    refused = InvalidParameterValue(
        "prompt is 900 tokens; the context is 512", error_code="INVALID_PARAMETER_VALUE"
    )
    invoke = scripted(refused)
    answer = ai_query.answer_row(invoke, Task.COMPLETIONS, "x", {"max_tokens": 4})
    assert answer.error == "INVALID_PARAMETER_VALUE: prompt is 900 tokens; the context is 512"
    assert invoke.calls == [{"prompt": "x", "max_tokens": 4}]


@pytest.mark.parametrize(
    "request_value, kind",
    [
        (None, "NULL_REQUEST"),
        ("", "EMPTY_REQUEST"),
        ("  \n", "EMPTY_REQUEST"),
        (42, "INVALID_REQUEST_TYPE"),
        (["a", "b"], "INVALID_REQUEST_TYPE"),
        ("x" * (ai_query.MAX_REQUEST_BYTES + 1), "REQUEST_TOO_LARGE"),
    ],
)
def test_malformed_rows_are_errors_without_a_request(request_value, kind):
    invoke = scripted(embedding_answer())
    answer = ai_query.answer_row(invoke, Task.EMBEDDINGS, request_value, {})
    assert ai_query.error_kind(answer.error) == kind
    assert invoke.calls == []


def test_chat_and_completions_bodies_and_results():
    chat = {
        "choices": [{"message": {"content": "Paris"}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1},
    }
    answer = ai_query.answer_row(scripted(chat), Task.CHAT, "Capital?", {"max_tokens": 8})
    assert (answer.result, answer.input_tokens, answer.output_tokens) == ("Paris", 5, 1)
    assert ai_query.request_body(Task.CHAT, "Capital?", {"max_tokens": 8}) == {
        "messages": [{"role": "user", "content": "Capital?"}],
        "max_tokens": 8,
    }
    odd = ai_query.answer_row(scripted({"choices": []}), Task.COMPLETIONS, "x", {})
    assert ai_query.error_kind(odd.error) == "INVALID_RESPONSE"


def test_rows_keep_their_order_under_concurrency():
    def invoke(body):
        return {"data": [{"embedding": [float(len(body["input"][0]))]}], "usage": {}}

    texts = ["a" * n for n in range(1, 40)]
    answers = ai_query.answer_rows(invoke, Task.EMBEDDINGS, texts, {}, concurrency=8)
    assert [a.result for a in answers] == [[float(n)] for n in range(1, 40)]


def test_error_kind():
    assert ai_query.error_kind("RESOURCE_DOES_NOT_EXIST: no endpoint") == "RESOURCE_DOES_NOT_EXIST"
    assert ai_query.error_kind("something went wrong") == "OTHER"
    assert ai_query.error_kind(None) is None


# ------------------------------------------------------------------ whole batches (Spark)


@pytest.fixture(scope="module")
def ws():
    from ptdeploy.workspace import control

    yield control.ensure_running()
    control.stop(quiet=True)


@pytest.fixture(scope="module")
def w(ws):
    from databricks.sdk import WorkspaceClient

    return WorkspaceClient(host=ws.host, token=ws.token, auth_type="pat")


@pytest.fixture(scope="module")
def conn(ws) -> ai_query.Connection:
    return ai_query.Connection(ws.host, ws.token)


def _deploy(w, endpoint: str, registered: tuple[str, str]) -> str:
    from ptdeploy.serving import endpoints, optimization, throughput

    name, version = registered
    info = optimization.optimizable_info(w, name, version)
    plan = throughput.plan_from_info(info, 0, 1, scale_to_zero=True)
    spec = endpoints.EndpointSpec(
        name=endpoint, entity_name=name, entity_version=version, plan=plan
    )
    endpoints.create_or_update(w, spec, timeout=300, progress=False)
    return endpoint


@pytest.fixture(scope="module")
def embeddings_ep(w, registered_minilm) -> str:
    return _deploy(w, "batch-minilm", registered_minilm)


@pytest.fixture(scope="module")
def completions_ep(w, registered_tiny_completions) -> str:
    return _deploy(w, "batch-tiny-completions", registered_tiny_completions)


DOCS = [
    "Provisioned throughput reserves tokens per second for an endpoint.",
    "A cat sleeps on the warm windowsill.",
    "Spark runs the same SQL on a laptop and on a cluster.",
    "Embeddings place similar sentences close together.",
]


@pytest.mark.slow
def test_embeddings_batch_with_malformed_rows_then_resume(spark, w, conn, embeddings_ep, tmp_path):
    rows = [{"id": i, "text": f"{DOCS[i % len(DOCS)]} (doc {i})"} for i in range(40)]
    rows[3]["text"] = ""
    rows[7]["text"] = None
    rows[11]["text"] = "   "
    rows[13]["text"] = "\t"
    source, out = str(tmp_path / "docs.parquet"), str(tmp_path / "embedded")
    batch.write_table(spark, rows, source, "local")
    s = spec(endpoint=embeddings_ep, input=source, output=out, concurrency=4, rows_per_commit=12)

    seen = []
    first = batch.run_batch(
        spark,
        spec(**{**s.__dict__, "row_limit": 20}),
        "local",
        connection=conn,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert (first.rows_in, first.rows_sent, first.rows_out) == (20, 20, 20)
    assert seen[0] == (0, 20) and seen[-1] == (20, 20) and len(seen) == 1 + first.commits
    assert first.errors_by_kind == {"EMPTY_REQUEST": 3, "NULL_REQUEST": 1}
    assert first.input_tokens > 0 and first.output_tokens == 0

    # The whole table: the 20 rows already done are skipped, not sent again.
    second = batch.run_batch(spark, s, "local", connection=conn)
    assert (second.rows_in, second.rows_skipped, second.rows_sent) == (40, 20, 20)
    assert second.complete and second.rows_ok == 36 and second.rows_error == 4
    assert batch.check_output(spark, s, "local") == {
        "rows_in": 40,
        "rows_out": 40,
        "distinct_ids": 40,
        "missing": 0,
        "neither_result_nor_error": 0,
    }
    out_rows = {r["id"]: r["response"] for r in batch.read_table(spark, out, "local").collect()}
    assert len(out_rows[0]["result"]) == 384 and out_rows[0]["errorMessage"] is None
    assert out_rows[7]["result"] is None and out_rows[7]["errorMessage"].startswith("NULL_REQUEST")

    # Nothing left: a third run sends nothing and changes nothing.
    third = batch.run_batch(spark, s, "local", connection=conn)
    assert third.rows_sent == 0 and third.rows_out == 40

    sizing = batch.size_with_planner(w, second, target_minutes=1.0)
    assert sizing.tokens_measured and sizing.max_provisioned_throughput > 0
    assert sizing.plan is not None and sizing.plan.max_provisioned_throughput > 0
    assert any("Planner" in line for line in sizing.explain())


@pytest.mark.slow
def test_completions_batch_over_long_and_non_string_rows(spark, conn, completions_ep, tmp_path):
    rows = [{"id": f"p{i:02d}", "topic": f"topic {i}", "n": i} for i in range(12)]
    rows[2]["topic"] = "word " * 2000  # far beyond tiny-llama's 512-token context
    rows[5]["topic"] = None
    source = str(tmp_path / "prompts.parquet")
    batch.write_table(spark, rows, source, "local")
    s = batch.BatchSpec(
        endpoint=completions_ep,
        input=source,
        output=str(tmp_path / "completed"),
        id_column="id",
        task="completions",
        prompt_template="Write about {topic}:",
        max_tokens=4,
        temperature=0.0,
        concurrency=4,
        failed_rows="fail",
    )
    with pytest.raises(BatchError, match=r"2 of 12 rows failed.*failed_rows='fail'"):
        batch.run_batch(spark, s, "local", connection=conn)
    out = {r["id"]: r["response"] for r in batch.read_table(spark, s.output, "local").collect()}
    assert len(out) == 12  # written before failing: nothing lost
    assert ai_query.error_kind(out["p02"]["errorMessage"]) == "INVALID_PARAMETER_VALUE"
    assert ai_query.error_kind(out["p05"]["errorMessage"]) == "NULL_REQUEST"
    assert all(isinstance(out[k]["result"], str) for k in out if k not in ("p02", "p05"))

    # A non-STRING request column: every row lands as an error, the job does not fail.
    ints = batch.BatchSpec(
        endpoint=completions_ep,
        input=source,
        output=str(tmp_path / "ints"),
        id_column="id",
        task="completions",
        request_column="n",
        max_tokens=4,
        row_limit=3,
    )
    result = batch.run_batch(spark, ints, "local", connection=conn)
    assert result.complete and result.errors_by_kind == {"INVALID_REQUEST_TYPE": 3}


@pytest.mark.slow
def test_notebook_embeds_a_sample_table_on_local_spark(embeddings_ep, tmp_path):
    """The template end to end, headless, against the module's endpoint: the sample input
    (two malformed rows) lands whole in the output, and the summary holds the SQL and the
    planner's sizing."""
    from ptdeploy.templates import runner

    source, out = str(tmp_path / "docs.parquet"), str(tmp_path / "docs-embedded")
    run = runner.run_notebook(
        "notebooks/batch_inference.ipynb",
        "parameters/batch_inference/local.yaml",
        {
            "endpoint_name": embeddings_ep,
            "deploy_if_missing": "false",
            "input_table": source,
            "output_table": out,
            "sample_rows": "30",
        },
        out_dir=tmp_path / "run",
        progress=False,
    )
    assert run.ok, run.describe_failure()
    summary = run.summary
    assert (summary["rows_in"], summary["rows_out"], summary["rows_ok"]) == (30, 30, 28)
    assert summary["errors_by_kind"] == {"EMPTY_REQUEST": 1, "NULL_REQUEST": 1}
    assert summary["complete"] and summary["task"] == "llm/v1/embeddings"
    expected = batch.batch_sql(
        spec(endpoint=embeddings_ep, input=source, output=out), ["id", "text"]
    )
    assert summary["sql"] == expected  # the text a Databricks cluster would run
    assert summary["sizing"]["tokens_measured"] and summary["sizing"]["planned"]


@pytest.mark.slow
def test_duplicate_ids_are_refused_before_anything_is_sent(spark, conn, tmp_path):
    source = str(tmp_path / "dup.parquet")
    batch.write_table(spark, [{"id": 1, "text": "a"}, {"id": 1, "text": "b"}], source, "local")
    s = spec(endpoint="never-called", input=source, output=str(tmp_path / "o"))
    with pytest.raises(ParameterError, match="id_column 'id': 2 rows but 1 distinct"):
        batch.run_batch(spark, s, "local", connection=conn)
    assert not batch.table_exists(spark, s.output, "local")


# ------------------------------------------------------------------ the notebook's parameters


def _params(**overrides):
    from ptdeploy.templates import runner

    return runner.resolve_parameters(
        "notebooks/batch_inference.ipynb", "parameters/batch_inference/local.yaml", overrides
    )


def test_local_parameters_resolve_typed():
    p = _params(concurrency="4", row_limit="50")
    assert (p["concurrency"], p["row_limit"], p["prompt_template"]) == (4, 50, None)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"request_column": ""}, "'request_column'=None and 'prompt_template'=None"),
        ({"prompt_template": "Summarize: {text}"}, "set exactly one"),
        ({"target": "databricks"}, "'deploy_if_missing'=True applies to target 'local' only"),
        ({"failed_rows": "skip"}, "failed_rows"),
        ({"concurrency": "0"}, "concurrency"),
        ({"target_minutes": "0"}, "target_minutes"),
    ],
)
def test_bad_parameters_name_the_parameter(overrides, message):
    with pytest.raises(ParameterError, match=message):
        _params(**overrides)
