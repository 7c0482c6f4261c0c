"""The ``llm/v1`` tasks: the one home of the task names and of what a logged model says.

A model logged with MLflow's ``transformers`` flavor and ``task="llm/v1/..."`` gets the
endpoint API of that task (completions, chat or embeddings); provisioned throughput serves
only such models. Both sides import this module: the client (logging, catalog, load
test, specs) and the local workspace (optimization info, request schemas, engine), so a
task name or an embedding model type is written once.
https://docs.databricks.com/machine-learning/model-serving/deploy-prov-throughput-foundation-model-apis

Standard library only, and nothing from the rest of ptdeploy: the local workspace must be
able to import it without the notebook side.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

TASK_COMPLETIONS = "llm/v1/completions"
TASK_CHAT = "llm/v1/chat"
TASK_EMBEDDINGS = "llm/v1/embeddings"
TASKS = (TASK_COMPLETIONS, TASK_CHAT, TASK_EMBEDDINGS)

# The embedding families provisioned throughput serves (GTE and BGE), as the
# get-model-optimization-info answer names them; an embedding model of neither family
# (a plain BERT encoder such as all-MiniLM) is answered as "bert".
EMBEDDING_FAMILIES = ("gte", "bge")
EMBEDDING_SERVED_MODEL_TYPES = (*EMBEDDING_FAMILIES, "bert")
# What an embedding model is logged with, ``metadata={"model_type": ...}``: each value
# starts with its family (the templates' model_type widget offers these).
EMBEDDING_MODEL_TYPES = ("gte-large", "gte-base", "bge-large", "bge-base")


def logged_task(metadata: Mapping[str, Any] | None, flavors: Mapping[str, Any] | None) -> Any:
    """The task a logged model records in its MLmodel: ``metadata.task``, else the
    ``transformers`` flavor's ``inference_task``; None when it records neither.

    The one reader of that rule: the catalog, the local optimization info and the local
    engine all call it (the value is returned as written, a caller checks it is in TASKS).
    """
    flavor = (flavors or {}).get("transformers") or {}
    return (metadata or {}).get("task") or flavor.get("inference_task")


def embedding_family(model_type: str | None) -> str | None:
    """The family (``gte``, ``bge``) a logged ``metadata.model_type`` belongs to, or None."""
    declared = str(model_type or "")
    return next((f for f in EMBEDDING_FAMILIES if declared.startswith(f)), None)
