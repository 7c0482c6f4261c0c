"""Log a model with MLflow's ``transformers`` flavor so it can be served with
provisioned throughput.

Databricks decides eligibility from what is logged: the ``task`` (one of the
``llm/v1/*`` interfaces, which fixes the endpoint's API), the architecture and, for
embedding models, ``metadata["model_type"]``. This module checks those before anything
is written, and logs without registering: registration is a separate step
(:mod:`ptdeploy.registry`) so a failure in between never leaves a half-registered version.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from typing import Any

from ptdeploy.errors import ModelLoggingError
from ptdeploy.models import LoadedModel

TASK_COMPLETIONS = "llm/v1/completions"
TASK_CHAT = "llm/v1/chat"
TASK_EMBEDDINGS = "llm/v1/embeddings"
TASKS = (TASK_COMPLETIONS, TASK_CHAT, TASK_EMBEDDINGS)
# model_type values Databricks recognises for provisioned-throughput embedding models.
EMBEDDING_MODEL_TYPES = ("gte-large", "gte-base", "bge-large", "bge-base")

_EXAMPLE_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\nWhat is Apache Spark?\n\n### Response:\n"
)


@dataclass(frozen=True)
class LoggedModel:
    """What ``log_model`` produced: the run and the model URI to register."""

    run_id: str
    model_uri: str
    task: str
    metadata: dict[str, Any]


def check_task(loaded: LoadedModel, task: str) -> None:
    """Refuse a task the model cannot serve, before anything is logged."""
    if task not in TASKS:
        raise ModelLoggingError(f"task={task!r} is not valid; use one of {', '.join(TASKS)}.")
    arch = loaded.architecture
    if loaded.kind == "causal-lm" and task == TASK_EMBEDDINGS:
        raise ModelLoggingError(
            f"task='{TASK_EMBEDDINGS}' needs an embedding (encoder) model, but "
            f"{loaded.source.describe()} is a causal language model ({arch}). Use "
            f"'{TASK_COMPLETIONS}' or '{TASK_CHAT}', or an embedding model such as "
            "all-minilm-l6-v2, GTE or BGE."
        )
    if loaded.kind == "encoder" and task != TASK_EMBEDDINGS:
        raise ModelLoggingError(
            f"task={task!r} needs a causal language model, but {loaded.source.describe()} is "
            f"an encoder ({arch}) that only produces embeddings. Use '{TASK_EMBEDDINGS}'."
        )
    if task == TASK_CHAT and not getattr(loaded.tokenizer, "chat_template", None):
        raise ModelLoggingError(
            f"task='{TASK_CHAT}' needs a tokenizer with a chat template; "
            f"{loaded.source.describe()} has none. Use an Instruct/chat model or "
            f"'{TASK_COMPLETIONS}'."
        )


def input_example(task: str) -> dict[str, Any]:
    """An input example in the shape of the task's request (MLflow validates it)."""
    if task == TASK_COMPLETIONS:
        return {"prompt": _EXAMPLE_PROMPT, "max_tokens": 32, "temperature": 0.0}
    if task == TASK_CHAT:
        return {
            "messages": [{"role": "user", "content": "What is Apache Spark?"}],
            "max_tokens": 32,
            "temperature": 0.0,
        }
    return {"input": ["What is Apache Spark?", "Provisioned throughput endpoints."]}


def pip_requirements() -> list[str]:
    """Explicit requirements: MLflow's inference of them crashes on a missing torchvision."""
    reqs = []
    for dist in ("mlflow", "torch", "transformers", "accelerate", "safetensors", "tokenizers"):
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        reqs.append(f"{dist}=={version.split('+')[0]}")
    return reqs


def _make_deterministic(loaded: LoadedModel) -> None:
    """Greedy decoding by default: a served model must not sample unless asked to."""
    gen = getattr(loaded.model, "generation_config", None)
    if gen is None:
        return
    gen.do_sample = False
    for name in ("temperature", "top_p", "top_k"):
        if hasattr(gen, name):
            setattr(gen, name, None)
    if getattr(gen, "pad_token_id", None) is None and loaded.tokenizer.pad_token_id is not None:
        gen.pad_token_id = loaded.tokenizer.pad_token_id


def build_metadata(
    loaded: LoadedModel, task: str, model_type: str | None, extra: dict[str, Any] | None
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"task": task, "ptdeploy_source": loaded.source.describe()}
    if task == TASK_EMBEDDINGS:
        if model_type is None:
            raise ModelLoggingError(
                "embedding models need metadata model_type for provisioned throughput: give "
                f"one of {', '.join(EMBEDDING_MODEL_TYPES)}."
            )
        if model_type not in EMBEDDING_MODEL_TYPES:
            raise ModelLoggingError(
                f"model_type={model_type!r} is not valid; use one of "
                f"{', '.join(EMBEDDING_MODEL_TYPES)}."
            )
        metadata["model_type"] = model_type
        if loaded.pooling:
            metadata["pooling"] = dict(loaded.pooling)
    elif model_type is not None:
        raise ModelLoggingError(
            f"model_type={model_type!r} applies to embedding models only (task "
            f"'{TASK_EMBEDDINGS}'); leave it empty for task={task!r}."
        )
    metadata.update(extra or {})
    return metadata


def log_model(
    loaded: LoadedModel,
    *,
    task: str,
    model_type: str | None = None,
    metadata: dict[str, Any] | None = None,
    save_pretrained: bool = True,
    example: dict[str, Any] | None = None,
    name: str = "model",
    run_name: str | None = None,
) -> LoggedModel:
    """Log ``loaded`` in a new MLflow run (of the current experiment); do not register.

    ``save_pretrained=False`` stores a reference to the hub repository instead of a copy
    of the weights: only possible for a hub model (MLflow records its repo id and commit).
    """
    import mlflow

    check_task(loaded, task)
    if not save_pretrained and not loaded.source.is_hub:
        raise ModelLoggingError(
            f"save_pretrained=False needs a hub model (MLflow stores only a reference to the "
            f"Hugging Face repository), but the source is {loaded.source.describe()}. Use "
            "save_pretrained=True to store the weights."
        )
    meta = build_metadata(loaded, task, model_type, metadata)
    _make_deterministic(loaded)
    components = {"model": loaded.model, "tokenizer": loaded.tokenizer}
    with mlflow.start_run(run_name=run_name) as run:
        mlflow.set_tags({"ptdeploy.task": task, "ptdeploy.source": loaded.source.describe()})
        info = mlflow.transformers.log_model(
            transformers_model=components,
            name=name,
            task=task,
            input_example=example if example is not None else input_example(task),
            metadata=meta,
            pip_requirements=pip_requirements(),
            save_pretrained=save_pretrained,
        )
    return LoggedModel(run_id=run.info.run_id, model_uri=info.model_uri, task=task, metadata=meta)
