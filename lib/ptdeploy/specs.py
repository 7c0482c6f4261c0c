"""The declared parameters of every notebook template.

The notebook's ``parameters`` cell holds the defaults; these specs hold types, choices,
labels and checks. A test keeps the two (and the YAML files under ``parameters/`` and
the job definitions) in step.
"""

from __future__ import annotations

from typing import Any

from ptdeploy import names
from ptdeploy.errors import ParameterError
from ptdeploy.model_logging import EMBEDDING_MODEL_TYPES, TASKS
from ptdeploy.parameters import Param, ParameterSpec
from ptdeploy.targets import Target

_ENDPOINT_HELP = "letters, digits, '-' and '_', at most 63 characters"


def _uc_part(what: str):
    def check(value: str) -> None:
        try:
            names.check_uc_part(value, what)
        except ParameterError as exc:
            raise ValueError(str(exc).split(": ", 1)[-1]) from None

    return check


def _endpoint_name(value: str) -> None:
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}", value):
        raise ValueError(f"not a valid endpoint name ({_ENDPOINT_HELP})")


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
)

LLAMA_COMPLETIONS = ParameterSpec(
    notebook="llama_completions",
    params=(
        *COMMON_MODEL,
        Param("task", "choice", "Task", choices=(TASKS[0], TASKS[1])),
        *COMMON_SERVING,
        Param("prompt", "str", "Smoke-test prompt"),
        Param("max_tokens", "int", "Smoke-test max_tokens", minimum=1, maximum=8192),
    ),
    cross_checks=(_chunks_in_order,),
)

EMBEDDING_MODEL_TYPE = Param(
    "model_type", "choice", "Embedding model_type (metadata)", choices=EMBEDDING_MODEL_TYPES
)

SPECS: dict[str, ParameterSpec] = {spec.notebook: spec for spec in (LLAMA_COMPLETIONS,)}


def spec_for(notebook: str) -> ParameterSpec:
    """The spec of a notebook by its stem (``llama_completions``) or path."""
    from pathlib import Path

    stem = Path(notebook).stem
    if stem not in SPECS:
        raise ParameterError(f"no parameter spec for notebook {stem!r}; known: {', '.join(SPECS)}")
    return SPECS[stem]
