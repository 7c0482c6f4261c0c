"""``get-model-optimization-info`` of the local workspace: can a registered model version
be served with provisioned throughput, and in what increments?

Databricks decides from what was logged; so does this module, reading the model
version's ``MLmodel`` from the local MLflow registry:

- the task, from ``metadata.task`` or the transformers flavor's ``inference_task``: only
  models logged with an ``llm/v1/*`` task have the API a provisioned-throughput endpoint
  serves;
- the architecture, from the flavor's ``pipeline_model_type`` (``LlamaForCausalLM``...),
  else from the logged ``model/config.json``. ``save_pretrained=False`` models have no
  weights nor config in their artifacts, so the flavor conf is what counts;
- for embedding models, ``metadata.model_type`` (``gte-large``, ``bge-large``...).

Eligible: Llama, Mistral, Mixtral, MPT and DBRX causal LMs (``model_type`` ``llama``,
``mistral``, ``mixtral``, ``mpt``, ``dbrx``), GPT OSS, Gemma 3 and Llama 4 (sized in model
units: ``model_unit_chunk_size`` instead of ``throughput_chunk_size``, as on Databricks) and BERT-family encoders logged for
``llm/v1/embeddings`` (``model_type`` from the logged ``metadata.model_type`` family:
``gte`` or ``bge``; ``bert`` when none was logged — Databricks' own value for embedding
models is not documented, this is the local choice). Anything else answers
``{"optimizable": false}``.

How the local throughput chunk size is chosen
---------------------------------------------
On Databricks a chunk is the throughput one unit of GPU capacity sustains for that
model. Locally the unit of capacity is one worker process on the CPU, so the chunk is
what one worker sustains, as the inference engine estimates it from the parameter count
P (``ptdeploy.workspace.engine.estimate_tokens_per_second``: batched decode steps of a
fixed overhead plus ``2·P`` FLOPs per sequence for causal LMs, ``2·P`` FLOPs per input
token for encoders, at a CPU FLOP rate calibrated on the project's 2-core machine),
rounded *down* to a multiple of 10, at least 10. A formula, not a measurement at request
time: the answer is the same every time, as notebooks compute multiples of it. For
example tiny-llama (140k parameters) gets 1930, SmolLM2-135M 60, all-MiniLM-L6-v2 2640,
an 8B Llama the minimum, 10.

P is counted exactly from the safetensors headers of the logged weights; without
weights, estimated from the logged ``config.json`` (or the Hugging Face cache's copy for
``save_pretrained=False``); when nothing is known the chunk is the minimum, 10.
The same function serves the REST answer and the server's validation of
``min/max_provisioned_throughput``, so the two can never disagree.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from ptdeploy.errors import ModelVersionNotFoundError, version_list
from ptdeploy.llm_tasks import TASK_EMBEDDINGS, TASKS, embedding_family, logged_task

# architecture (config.architectures / pipeline_model_type) -> model_type answered
CAUSAL_FAMILIES: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "MixtralForCausalLM": "mixtral",
    "MptForCausalLM": "mpt",
    "DbrxForCausalLM": "dbrx",
}
# Families Databricks provisions in model units, not tokens per second ("Models that use
# model units": GPT OSS 120B/20B, Gemma 3 12B, Llama 4 Maverick;
# https://docs.databricks.com/aws/en/machine-learning/foundation-model-apis/model-units).
MODEL_UNIT_FAMILIES: dict[str, str] = {
    "GptOssForCausalLM": "gpt-oss",
    "Gemma3ForCausalLM": "gemma3",
    "Gemma3ForConditionalGeneration": "gemma3",
    "Llama4ForConditionalGeneration": "llama4",
}
# Databricks documents no chunk value for model units; its example provisions 50. The
# local workspace answers 50: one chunk is one worker, as a throughput chunk is.
MODEL_UNIT_CHUNK = 50
# BERT-family encoders used by GTE/BGE (NewModel is gte-*-en-v1.5's remote-code class).
ENCODER_ARCHITECTURES = ("BertModel", "XLMRobertaModel", "RobertaModel", "NewModel")

MIN_CHUNK = 10


@dataclass(frozen=True)
class ModelDescription:
    """What the server knows about a registered model version, and its decision."""

    name: str
    version: str
    task: str | None
    architecture: str | None
    optimizable: bool
    model_type: str | None = None
    throughput_chunk_size: int | None = None
    parameter_count: int | None = None
    reason: str = ""  # why it is not optimizable, for error messages
    # Set for the families Databricks provisions in model units rather than tokens per
    # second (GPT OSS, Gemma 3, Llama 4 Maverick: "Models that use model units",
    # https://docs.databricks.com/aws/en/machine-learning/foundation-model-apis/model-units):
    # served entities then give provisioned_model_units, a multiple of this chunk.
    model_unit_chunk_size: int | None = None

    def response(self) -> dict[str, Any]:
        """The body of ``GET .../get-model-optimization-info/{name}/{version}``."""
        if not self.optimizable:
            return {"optimizable": False}
        if self.model_unit_chunk_size is not None:
            return {
                "optimizable": True,
                "model_type": self.model_type,
                "model_unit_chunk_size": self.model_unit_chunk_size,
            }
        return {
            "optimizable": True,
            "model_type": self.model_type,
            "throughput_chunk_size": self.throughput_chunk_size,
        }


# ------------------------------------------------------------------ chunk size


def throughput_chunk_size(parameter_count: int | None, kind: str) -> int:
    """The increment of provisioned throughput (tokens/s) for one local worker."""
    if not parameter_count:
        return MIN_CHUNK
    from ptdeploy.workspace.engine import estimate_tokens_per_second

    tps = estimate_tokens_per_second(parameter_count, kind)
    return max(MIN_CHUNK, int(tps) // 10 * 10)


# ------------------------------------------------------------- parameter count


def count_safetensors_parameters(model_dir: Path) -> int | None:
    """Exact parameter count from the headers of ``*.safetensors`` (weights not read)."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for path in files:
        with path.open("rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            if length > 100_000_000:  # not a safetensors header
                return None
            header = json.loads(fh.read(length))
        for key, info in header.items():
            if key != "__metadata__":
                total += math.prod(info.get("shape", []))
    return total


def estimate_parameters_from_config(config: dict[str, Any]) -> int | None:
    """Parameter count of a transformer from its ``config.json`` (close, not exact)."""
    h = config.get("hidden_size") or config.get("d_model") or config.get("n_embd")
    layers = config.get("num_hidden_layers") or config.get("n_layers") or config.get("n_layer")
    vocab = config.get("vocab_size")
    if not (h and layers and vocab):
        return None
    inter = config.get("intermediate_size") or config.get("ffn_dim") or 4 * h
    heads = config.get("num_attention_heads") or 1
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or h // heads
    attention = 2 * h * h + 2 * h * kv_heads * head_dim
    experts = config.get("num_local_experts") or 1
    gated = any(a.endswith("ForCausalLM") for a in config.get("architectures") or [])
    mlp = (3 if gated else 2) * h * inter * experts
    embeddings = vocab * h * (1 if config.get("tie_word_embeddings", True) else 2)
    return int(layers * (attention + mlp) + embeddings)


def _hf_cache_config(repo: str | None, revision: str | None) -> dict[str, Any] | None:
    """config.json of a hub model from the local Hugging Face cache (never downloads)."""
    if not repo:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(repo, "config.json", revision=revision)
    except Exception:
        return None
    if isinstance(path, str) and Path(path).is_file():
        return json.loads(Path(path).read_text())
    return None


# ------------------------------------------------------------------ the lookup


def _local_path(uri: str) -> Path | None:
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path))
    return None


def _mlmodel(client: Any, name: str, version: str) -> tuple[dict[str, Any], Path | None]:
    """The MLmodel of a registered version as a dict, and its artifact dir when local."""
    import yaml
    from mlflow.artifacts import download_artifacts

    uri = client.get_model_version_download_uri(name, version)
    local = _local_path(uri)
    if local is not None and (local / "MLmodel").is_file():
        return yaml.safe_load((local / "MLmodel").read_text()), local
    path = download_artifacts(artifact_uri=f"{uri.rstrip('/')}/MLmodel")
    return yaml.safe_load(Path(path).read_text()), None


def describe(
    mlmodel: dict[str, Any], artifacts: Path | None, name: str, version: str
) -> ModelDescription:
    """Decide from an MLmodel dict (and the local artifact directory, if any)."""
    flavor = (mlmodel.get("flavors") or {}).get("transformers") or {}
    metadata = mlmodel.get("metadata") or {}
    task = logged_task(metadata, mlmodel.get("flavors"))
    config: dict[str, Any] | None = None
    params: int | None = None
    model_dir = artifacts / (flavor.get("model_binary") or "model") if artifacts else None
    if model_dir is not None and (model_dir / "config.json").is_file():
        config = json.loads((model_dir / "config.json").read_text())
    if config is None and flavor:
        config = _hf_cache_config(
            flavor.get("source_model_name"), flavor.get("source_model_revision")
        )
    architecture = (
        flavor.get("pipeline_model_type") or ((config or {}).get("architectures") or [None])[0]
    )
    base = ModelDescription(
        name=name, version=version, task=task, architecture=architecture, optimizable=False
    )
    if not flavor:
        return _replace(base, reason="it was not logged with MLflow's transformers flavor")
    if task not in TASKS:
        return _replace(
            base,
            reason=f"it was logged with task {task!r}; provisioned throughput needs one of "
            f"{', '.join(TASKS)} (mlflow.transformers.log_model(task=...))",
        )
    if model_dir is not None and model_dir.is_dir():
        params = count_safetensors_parameters(model_dir)
    if params is None and config is not None:
        params = estimate_parameters_from_config(config)
    if task == TASK_EMBEDDINGS:
        family = embedding_family(metadata.get("model_type"))
        if architecture not in ENCODER_ARCHITECTURES and family is None:
            return _replace(
                base,
                reason=f"architecture {architecture} is not a BERT-family encoder (GTE/BGE); "
                "log a GTE or BGE model with metadata={'model_type': 'gte-large'}",
            )
        return _replace(
            base,
            optimizable=True,
            model_type=family or "bert",
            parameter_count=params,
            throughput_chunk_size=throughput_chunk_size(params, "encoder"),
        )
    if architecture in MODEL_UNIT_FAMILIES:
        return _replace(
            base,
            optimizable=True,
            model_type=MODEL_UNIT_FAMILIES[architecture],
            parameter_count=params,
            model_unit_chunk_size=MODEL_UNIT_CHUNK,
        )
    model_type = CAUSAL_FAMILIES.get(architecture or "")
    if model_type is None:
        return _replace(
            base,
            reason=f"architecture {architecture} is not one provisioned throughput serves "
            f"({', '.join([*CAUSAL_FAMILIES, *MODEL_UNIT_FAMILIES])})",
        )
    return _replace(
        base,
        optimizable=True,
        model_type=model_type,
        parameter_count=params,
        throughput_chunk_size=throughput_chunk_size(params, "causal-lm"),
    )


def _replace(desc: ModelDescription, **changes: Any) -> ModelDescription:
    from dataclasses import replace

    return replace(desc, **changes)


# Catalogs every local workspace has (see RegistryCatalog.catalog_names).
BUILTIN_CATALOGS = ("main", "system")


class RegistryCatalog:
    """Looks model versions up in an MLflow registry (the local SQLite one by default).

    Descriptions are cached per (name, version): a registered version is immutable.
    """

    def __init__(self, tracking_uri: str | None = None) -> None:
        if tracking_uri is None:
            from ptdeploy import state

            tracking_uri = state.tracking_uri()
        self.tracking_uri = tracking_uri
        self._client: Any = None
        self._cache: dict[tuple[str, str], ModelDescription] = {}

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(
                tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri
            )
        return self._client

    def describe(self, name: str, version: str) -> ModelDescription:
        """The decision for ``name`` version ``version``; ModelVersionNotFoundError if absent."""
        from mlflow.exceptions import MlflowException

        version = str(version)
        key = (name, version)
        if key in self._cache:
            return self._cache[key]
        try:
            mv = self.client.get_model_version(name, version)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            raise ModelVersionNotFoundError(self._not_found_message(name, version)) from exc
        status = str(getattr(mv, "status", "READY"))
        if status != "READY":
            raise ModelVersionNotFoundError(
                f"Model version {name}/{version} is {status}, not READY; wait for its "
                "registration to finish."
            )
        mlmodel, artifacts = _mlmodel(self.client, name, version)
        desc = describe(mlmodel, artifacts, name, version)
        self._cache[key] = desc
        return desc

    def catalog_names(self) -> list[str]:
        """The Unity Catalog catalogs of the local workspace: ``main`` and ``system``
        (every Unity Catalog workspace has them), plus the first level of every
        registered model's name (registering ``ml.team.model`` creates catalog ``ml``)."""
        names = set(BUILTIN_CATALOGS)
        for model in self.client.search_registered_models(max_results=1000):
            parts = str(model.name).split(".")
            if len(parts) == 3:
                names.add(parts[0])
        return sorted(names)

    def catalog_exists(self, name: str) -> bool:
        return name in BUILTIN_CATALOGS or name in self.catalog_names()

    def _not_found_message(self, name: str, version: str) -> str:
        from mlflow.exceptions import MlflowException

        try:
            versions = self.client.search_model_versions(f"name='{name}'")
        except MlflowException:
            versions = []
        if not versions:
            return (
                f"Registered model {name} does not exist in the local registry "
                f"({self.tracking_uri}); register it first (catalog.schema.model)."
            )
        existing = version_list(versions)
        return f"Model version {name}/{version} does not exist; existing versions: {existing}."


def optimization_info(
    name: str, version: str, *, tracking_uri: str | None = None
) -> dict[str, Any]:
    """The REST answer for one model version (raises ModelVersionNotFoundError)."""
    return RegistryCatalog(tracking_uri).describe(name, version).response()
