"""The declared parameters of every notebook template.

The notebook's ``parameters`` cell holds the defaults; these specs hold types, choices,
labels and checks. A test keeps the two (and the YAML files under ``parameters/`` and
the job definitions) in step.
"""

from __future__ import annotations

from typing import Any

from ptdeploy import names
from ptdeploy.errors import ParameterError
from ptdeploy.llm_tasks import EMBEDDING_MODEL_TYPES, TASKS
from ptdeploy.serving import gateway
from ptdeploy.targets import Target
from ptdeploy.templates.notebook import STEPS
from ptdeploy.templates.parameters import Param, ParameterSpec

_ENDPOINT_HELP = "letters, digits, '-' and '_', at most 63 characters"


_uc_part = names.uc_part_check


def _endpoint_name(value: str) -> None:
    names.check_endpoint_name(value)  # the rule the client and the local workspace share


def _alias(value: str) -> None:
    try:
        names.check_alias(value)
    except ParameterError as exc:
        raise ValueError(str(exc).split(": ", 1)[-1]) from None


def _chunks_in_order(values: dict[str, Any]) -> None:
    lo, hi = values.get("min_chunks"), values.get("max_chunks")
    if lo is not None and hi is not None and lo > hi:
        raise ParameterError(
            f"parameters 'min_chunks'={lo} and 'max_chunks'={hi}: min_chunks must be <= max_chunks."
        )
    if values.get("scale_to_zero") and lo not in (None, 0):
        raise ParameterError(
            f"parameter 'scale_to_zero'=true needs 'min_chunks'=0 (got {lo}): an endpoint "
            "can only scale to zero when its minimum throughput is zero."
        )


COMMON_MODEL = (
    Param("model_source", "str", "Model source", "offline name, local directory or hub id"),
    Param(
        "model_revision", "str", "Hub revision (optional)", "a branch, tag or commit", optional=True
    ),
    Param("catalog", "str", "Unity Catalog catalog", check=_uc_part("catalog")),
    Param("schema", "str", "Unity Catalog schema", check=_uc_part("schema")),
    Param("model_name", "str", "Registered model name", check=_uc_part("model_name")),
    Param("alias", "str", "Alias to move to the new version", check=_alias),
    Param("save_pretrained", "bool", "Copy weights into the logged model"),
)

COMMON_SERVING = (
    Param("endpoint_name", "str", "Serving endpoint name", _ENDPOINT_HELP, check=_endpoint_name),
    Param("min_chunks", "int", "Min throughput (chunks)", minimum=0, maximum=1000),
    Param("max_chunks", "int", "Max throughput (chunks)", minimum=1, maximum=1000),
    Param("scale_to_zero", "bool", "Scale to zero when idle"),
    Param("wait_timeout_minutes", "int", "Wait for READY (minutes)", minimum=1, maximum=240),
    Param("teardown", "bool", "Delete the endpoint at the end"),
    Param("target", "choice", "Target", choices=tuple(t.value for t in Target)),
    Param(
        "steps",
        "choice",
        "Steps to run (a job runs one per task)",
        choices=STEPS,
    ),
)

# AI Gateway, tags and canary (ptdeploy.serving.gateway says what each sets on the endpoint).
GATEWAY = (
    Param("usage_tracking", "bool", "AI Gateway: track usage (tokens per request)"),
    Param(
        "inference_table_catalog",
        "str",
        "Inference table catalog (empty: no inference table)",
        "an existing Unity Catalog catalog, or empty",
        optional=True,
        check=_uc_part("inference_table_catalog"),
    ),
    Param(
        "inference_table_schema",
        "str",
        "Inference table schema",
        "a Unity Catalog schema, or empty",
        optional=True,
        check=_uc_part("inference_table_schema"),
    ),
    Param(
        "inference_table_prefix",
        "str",
        "Inference table name prefix (empty: the endpoint name)",
        "a table name prefix, or empty",
        optional=True,
        check=_uc_part("inference_table_prefix"),
    ),
    Param(
        "rate_limit_calls_per_minute",
        "int",
        "Rate limit: calls per minute for the endpoint (empty: none)",
        minimum=1,
        optional=True,
    ),
    Param(
        "tags", "str", "Endpoint tags", gateway.TAGS_HELP, optional=True, check=gateway.check_tags
    ),
    Param(
        "canary_percent",
        "int",
        "Canary: % of traffic to the new version until promoted (empty or 0: none)",
        optional=True,
        check=gateway.check_canary_percent,
    ),
)

LLAMA_COMPLETIONS = ParameterSpec(
    notebook="llama_completions",
    params=(
        *COMMON_MODEL,
        Param("task", "choice", "Task", choices=(TASKS[0], TASKS[1])),
        *COMMON_SERVING,
        *GATEWAY,
        Param("prompt", "str", "Smoke-test prompt"),
        Param("max_tokens", "int", "Smoke-test max_tokens", minimum=1, maximum=8192),
        Param(
            "expect",
            "str",
            "Smoke test: text the completion must contain (empty: any answer)",
            "text, or empty",
            optional=True,
        ),
    ),
    cross_checks=(_chunks_in_order, gateway.check_parameters),
)

EMBEDDING_MODEL_TYPE = Param(
    "model_type", "choice", "Embedding model_type (metadata)", choices=EMBEDDING_MODEL_TYPES
)

TRUST_REMOTE_CODE = Param(
    "trust_remote_code", "bool", "Run the model repository's own code (trust_remote_code)"
)


def _embedding_spec(notebook: str) -> ParameterSpec:
    """GTE and BGE templates declare the same parameters: one implementation, two notebooks."""
    return ParameterSpec(
        notebook=notebook,
        params=(
            *COMMON_MODEL,
            TRUST_REMOTE_CODE,
            EMBEDDING_MODEL_TYPE,
            *COMMON_SERVING,
            *GATEWAY,
            Param("normalize", "bool", "L2-normalize the returned embeddings (client side)"),
        ),
        cross_checks=(_chunks_in_order, gateway.check_parameters),
    )


GTE_EMBEDDINGS = _embedding_spec("gte_embeddings")
BGE_EMBEDDINGS = _embedding_spec("bge_embeddings")

DEEPSEEK_R1_DISTILL_LLAMA = ParameterSpec(
    notebook="deepseek_r1_distill_llama",
    params=(
        *COMMON_MODEL,
        *COMMON_SERVING,
        *GATEWAY,
        Param("prompt", "str", "Smoke-test question (user message)"),
        Param(
            "max_tokens",
            "int",
            "Smoke-test max_tokens (reasoning is long)",
            minimum=1,
            maximum=32768,
        ),
        Param("temperature", "float", "Smoke-test temperature", minimum=0.0, maximum=2.0),
    ),
    cross_checks=(_chunks_in_order, gateway.check_parameters),
)


_BY_NAME = {p.name: p for p in COMMON_MODEL}

DEPLOY_FROM_UNITY_CATALOG = ParameterSpec(
    notebook="deploy_from_unity_catalog",
    params=(
        _BY_NAME["catalog"],
        _BY_NAME["schema"],
        _BY_NAME["model_name"],
        Param(
            "model_version",
            "int",
            "Model version (empty: the latest)",
            minimum=1,
            optional=True,
        ),
        *COMMON_SERVING,
        *GATEWAY,
        Param("prompt", "str", "Smoke-test prompt (or text to embed)"),
        Param("max_tokens", "int", "Smoke-test max_tokens", minimum=1, maximum=8192),
    ),
    cross_checks=(_chunks_in_order, gateway.check_parameters),
)

_SERVING = {p.name: p for p in COMMON_SERVING}


def _concurrency_ladder(value: str) -> None:
    """``"1,2,4,8"``: distinct whole numbers from 1 to 256 (what ``run_load_test`` takes)."""
    parts = [part.strip() for part in value.split(",")]
    if not all(part.isdigit() for part in parts):
        raise ValueError("expected comma-separated whole numbers, e.g. 1,2,4,8")
    levels = [int(part) for part in parts]
    if not all(1 <= level <= 256 for level in levels) or len(set(levels)) != len(levels):
        raise ValueError("expected distinct levels between 1 and 256, e.g. 1,2,4,8")


def _positive(value: float) -> None:
    if value <= 0:
        raise ValueError("must be > 0")


def _load_test_checks(values: dict[str, Any]) -> None:
    if values.get("deploy_if_missing") and values.get("target") == Target.DATABRICKS.value:
        raise ParameterError(
            "parameter 'deploy_if_missing'=true applies to target 'local' only: on Databricks "
            "deploy with a deployment notebook (provisioned throughput costs money), then "
            "load-test the endpoint with deploy_if_missing=false."
        )
    peak, rest = values.get("peak_requests_per_second"), values.get("rest_requests_per_second")
    if peak is not None and rest is not None and rest > peak:
        raise ParameterError(
            f"parameters 'rest_requests_per_second'={rest} and 'peak_requests_per_second'="
            f"{peak}: the load at rest cannot exceed the peak."
        )


LOAD_TEST_ENDPOINT = ParameterSpec(
    notebook="load_test_endpoint",
    params=(
        _SERVING["endpoint_name"],
        _SERVING["target"],
        Param("deploy_if_missing", "bool", "Deploy the endpoint if it does not exist (local)"),
        Param(
            "model_source",
            "str",
            "Model to deploy if missing",
            "offline name (tiny-llama, smollm2-135m-instruct, all-minilm-l6-v2) or directory",
        ),
        Param(
            "task",
            "choice",
            "Task (auto: ask the endpoint)",
            choices=("auto", "completions", "chat", "embeddings"),
        ),
        Param(
            "concurrency",
            "str",
            "Concurrency ladder",
            "comma-separated whole numbers, e.g. 1,2,4,8",
            check=_concurrency_ladder,
        ),
        Param("requests_per_level", "int", "Max requests per level", minimum=1, maximum=100000),
        Param(
            "max_seconds_per_level",
            "float",
            "Max seconds per level",
            minimum=0.1,
            maximum=3600,
        ),
        Param("prompt", "str", "Prompt, chat message or text to embed"),
        Param("max_tokens", "int", "max_tokens (completions, chat)", minimum=1, maximum=8192),
        Param(
            "peak_requests_per_second",
            "float",
            "Planned peak load (req/s)",
            check=_positive,
        ),
        Param("rest_requests_per_second", "float", "Planned load at rest (req/s)", minimum=0),
        Param("mean_input_tokens", "float", "Planned mean input tokens", minimum=0),
        Param("mean_output_tokens", "float", "Planned mean output tokens", minimum=0),
        Param(
            "p95_latency_target_s",
            "float",
            "p95 latency target (s, empty: none)",
            check=_positive,
            optional=True,
        ),
        Param("headroom", "float", "Planner headroom (x)", minimum=1.0, maximum=10.0),
        Param(
            "dbu_per_hour_per_unit",
            "float",
            "DBU/hour per chunk or model unit (empty: no cost)",
            "the model's row on Databricks' Foundation Model Serving pricing page",
            check=_positive,
            optional=True,
        ),
        Param(
            "price_per_dbu",
            "float",
            "Price per DBU (empty: no cost)",
            "pricing.default in system.billing.list_prices, or your contract",
            check=_positive,
            optional=True,
        ),
        _SERVING["wait_timeout_minutes"],
        Param(
            "out_dir",
            "str",
            "Results directory (empty: the state directory)",
            "a directory path",
            optional=True,
        ),
    ),
    cross_checks=(_load_test_checks,),
)


def _batch_checks(values: dict[str, Any]) -> None:
    column, template = values.get("request_column"), values.get("prompt_template")
    both_known = "request_column" in values and "prompt_template" in values  # partial: skip
    if both_known and (column is None) == (template is None):
        raise ParameterError(
            f"parameters 'request_column'={column!r} and 'prompt_template'={template!r}: set "
            "exactly one: the column that is the request, or a template such as "
            "'Summarize: {text}'."
        )
    if values.get("target") == Target.DATABRICKS.value:
        for name in ("deploy_if_missing", "sample_rows"):
            if values.get(name):
                raise ParameterError(
                    f"parameter {name!r}={values[name]!r} applies to target 'local' only: on "
                    "Databricks the endpoint and the input table must exist."
                )


BATCH_INFERENCE = ParameterSpec(
    notebook="batch_inference",
    params=(
        _SERVING["endpoint_name"],
        _SERVING["target"],
        Param(
            "input_table",
            "str",
            "Input table",
            "a table name (catalog.schema.table) or a Parquet path",
        ),
        Param(
            "output_table", "str", "Output table", "a table name or a Parquet path (appended to)"
        ),
        Param("id_column", "str", "Unique id column (resume skips ids already in the output)"),
        Param(
            "request_column",
            "str",
            "Request column (or use prompt_template)",
            "a STRING column of the input",
            optional=True,
        ),
        Param(
            "prompt_template",
            "str",
            "Prompt template (or use request_column)",
            "text with {column} placeholders, e.g. Summarize: {text}",
            optional=True,
        ),
        Param(
            "task",
            "choice",
            "Task (auto: ask the endpoint)",
            choices=("auto", "completions", "chat", "embeddings"),
        ),
        Param("max_tokens", "int", "max_tokens (completions, chat)", minimum=1, maximum=8192),
        Param("temperature", "float", "temperature (completions, chat)", minimum=0.0, maximum=2.0),
        Param(
            "row_limit",
            "int",
            "Row limit for a dry run (empty: all rows)",
            minimum=1,
            optional=True,
        ),
        Param("failed_rows", "choice", "Failed rows", choices=("keep", "fail")),
        Param("concurrency", "int", "Requests in flight", minimum=1, maximum=256),
        Param(
            "rows_per_commit", "int", "Rows per commit to the output", minimum=1, maximum=10_000_000
        ),
        Param(
            "target_minutes", "float", "Target time for the whole batch (minutes)", check=_positive
        ),
        Param("headroom", "float", "Planner headroom (x)", minimum=1.0, maximum=10.0),
        Param("deploy_if_missing", "bool", "Deploy the endpoint if it does not exist (local)"),
        Param(
            "model_source",
            "str",
            "Model to deploy if missing",
            "offline name (all-minilm-l6-v2, tiny-llama, smollm2-135m-instruct) or directory",
        ),
        Param(
            "sample_rows",
            "int",
            "Rows of a sample input written when it is missing (local; 0: never)",
            minimum=0,
            maximum=1_000_000,
        ),
        _SERVING["wait_timeout_minutes"],
    ),
    cross_checks=(_batch_checks,),
)

SPECS: dict[str, ParameterSpec] = {
    spec.notebook: spec
    for spec in (
        LLAMA_COMPLETIONS,
        GTE_EMBEDDINGS,
        BGE_EMBEDDINGS,
        DEEPSEEK_R1_DISTILL_LLAMA,
        DEPLOY_FROM_UNITY_CATALOG,
        LOAD_TEST_ENDPOINT,
        BATCH_INFERENCE,
    )
}


def spec_for(notebook: str) -> ParameterSpec:
    """The spec of a notebook by its stem (``llama_completions``) or path."""
    from pathlib import Path

    stem = Path(notebook).stem
    if stem not in SPECS:
        raise ParameterError(f"no parameter spec for notebook {stem!r}; known: {', '.join(SPECS)}")
    return SPECS[stem]
