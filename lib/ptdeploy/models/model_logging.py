"""Log a model with MLflow's ``transformers`` flavor so it can be served with
provisioned throughput.

Databricks decides eligibility from what is logged: the ``task`` (one of the
``llm/v1/*`` interfaces, which fixes the endpoint's API), the architecture and, for
embedding models, ``metadata["model_type"]``. This module checks those before anything
is written, and logs without registering: registration is a separate step
(:mod:`ptdeploy.models.registry`) so a failure in between never leaves a half-registered version.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ptdeploy.errors import ModelLoggingError
from ptdeploy.llm_tasks import (
    EMBEDDING_MODEL_TYPES,
    TASK_CHAT,
    TASK_COMPLETIONS,
    TASK_EMBEDDINGS,
    TASKS,
)
from ptdeploy.models.sources import OFFLINE_LICENSES, LoadedModel

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
    """Greedy decoding by default: a served model must not sample unless asked to.

    The sampling knobs get their neutral values rather than None: a text-generation
    pipeline (MLflow builds one to log the model) fills every None with its own sampling
    defaults (``temperature=0.7``), which transformers then flags as invalid next to
    ``do_sample=False``. Neutral values are what transformers expects of greedy decoding.
    """
    gen = getattr(loaded.model, "generation_config", None)
    if gen is None:
        return
    gen.do_sample = False
    for name, neutral in (("temperature", 1.0), ("top_p", 1.0), ("top_k", 50)):
        if hasattr(gen, name):
            setattr(gen, name, neutral)
    if getattr(gen, "pad_token_id", None) is None and loaded.tokenizer.pad_token_id is not None:
        gen.pad_token_id = loaded.tokenizer.pad_token_id


def model_card(loaded: LoadedModel) -> Any:
    """The model card MLflow logs, or None to let it fetch the hub's (hub models only).

    MLflow looks a card (and a license) up on the hub by the model's name unless it is
    given one; for an offline model or a local directory that lookup can only fail, with
    a warning. Offline models carry their known license; a local directory its own
    ``README.md`` card when it has one, else a card with license ``other`` (MLflow then
    asks, rightly, to verify the license).
    """
    if loaded.source.is_hub:
        return None
    from huggingface_hub import ModelCard, ModelCardData

    path = loaded.source.path
    if loaded.source.kind == "local" and path is not None and (path / "README.md").is_file():
        with contextlib.suppress(Exception):
            card = ModelCard.load(path / "README.md")
            if card.data.license:
                return card
    license_id = OFFLINE_LICENSES.get(loaded.source.name, "other")
    data = ModelCardData(license=license_id, library_name="transformers")
    return ModelCard.from_template(data, model_id=loaded.source.name)


# What transformers 5.17 says about how MLflow 3.17.2 calls it while validating the input
# example (``mlflow.transformers`` pyfunc ``_predict``): it passes the request's fields as
# ``generate`` kwargs next to the pipeline's own ``generation_config`` and decodes with
# ``clean_up_tokenization_spaces=True`` hard-coded. Not ptdeploy's call to fix: these
# exact notices are dropped, only during ``log_model``; anything else (and every error)
# still shows.
_MLFLOW_PREDICT_NOTICES: dict[str, tuple[str, ...]] = {
    "transformers.generation.utils": (
        "Passing `generation_config` together with generation-related arguments",
        "Both `max_new_tokens` (=",
    ),
    "transformers.generation.configuration_utils": (
        "The following generation flags are not valid and may be ignored: ['temperature']",
    ),
    "transformers.tokenization_utils_tokenizers": (
        "Ignoring clean_up_tokenization_spaces=True for BPE tokenizer",
    ),
}


class _DropNotices(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        return not record.getMessage().startswith(self.prefixes)


@contextlib.contextmanager
def _quiet_mlflow_predict_notices() -> Iterator[None]:
    installed = []
    for name, prefixes in _MLFLOW_PREDICT_NOTICES.items():
        logger, flt = logging.getLogger(name), _DropNotices(prefixes)
        logger.addFilter(flt)
        installed.append((logger, flt))
    try:
        yield
    finally:
        for logger, flt in installed:
            logger.removeFilter(flt)


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
    card = model_card(loaded)
    with mlflow.start_run(run_name=run_name) as run, _quiet_mlflow_predict_notices():
        mlflow.set_tags({"ptdeploy.task": task, "ptdeploy.source": loaded.source.describe()})
        info = mlflow.transformers.log_model(
            transformers_model=components,
            name=name,
            task=task,
            input_example=example if example is not None else input_example(task),
            metadata=meta,
            pip_requirements=pip_requirements(),
            save_pretrained=save_pretrained,
            model_card=card,
        )
    return LoggedModel(run_id=run.info.run_id, model_uri=info.model_uri, task=task, metadata=meta)


# ------------------------------------------------------------------ chat templates

# Model version tag: "true" when the chat template opens <think> in the prompt, recorded at
# registration so a query knows the reply starts inside the reasoning.
OPENS_THINK_TAG = "ptdeploy.chat_template_opens_think"


def template_opens_think(tokenizer: Any) -> bool:
    """Whether the chat template ends the generation prompt with ``<think>`` (DeepSeek-R1
    distills do: the reply then starts inside the reasoning). False without a template."""
    from ptdeploy.serving.query import THINK_OPEN  # query imports the SDK: 2 s at import

    if not getattr(tokenizer, "chat_template", None):
        return False
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "1 + 1 = ?"}], tokenize=False, add_generation_prompt=True
    )
    return prompt.rstrip().endswith(THINK_OPEN)


def record_template(registered: Any, tokenizer: Any) -> bool:
    """Tag the registered version with whether its chat template opens ``<think>`` (see
    the module docstring); return it."""
    import mlflow

    opens = template_opens_think(tokenizer)
    mlflow.MlflowClient().set_model_version_tag(
        registered.name, str(registered.version), OPENS_THINK_TAG, "true" if opens else "false"
    )
    return opens


def recorded_opens_think(name: str, version: str) -> bool:
    """What ``record_template`` stored; False when the version carries no such tag."""
    import mlflow

    try:
        mv = mlflow.MlflowClient().get_model_version(name, str(version))
    except Exception:
        return False
    return str((mv.tags or {}).get(OPENS_THINK_TAG, "false")).lower() == "true"
