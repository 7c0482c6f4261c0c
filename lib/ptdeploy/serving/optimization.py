"""Can a registered model version be served with provisioned throughput, and in what steps?

Databricks answers ``GET /api/2.0/serving-endpoints/get-model-optimization-info/{name}/{version}``
with ``{"optimizable": true, "model_type": "llama", "throughput_chunk_size": 980}`` for the
families provisioned throughput has optimized kernels for, ``{"optimizable": false}`` for
anything else, and, for newer families, ``model_unit_chunk_size`` instead of
``throughput_chunk_size``: those are provisioned in *model units*
(``provisioned_model_units``) rather than in tokens per second
(``min/max_provisioned_throughput``). The chunk size is the increment every provisioned
value must be a multiple of.

databricks-sdk 0.162 has no wrapper for this route, so it goes through
``w.api_client.do``: the SDK's own HTTP client, auth, retries and error mapping.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from databricks.sdk.errors import NotFound

from ptdeploy.errors import ModelVersionNotFoundError, NotOptimizableError, PtdeployError

if TYPE_CHECKING:
    from databricks.sdk import WorkspaceClient

OPTIMIZATION_INFO_PATH = "/api/2.0/serving-endpoints/get-model-optimization-info/{name}/{version}"

# What provisioned throughput serves, to tell the user what would work. The current list
# is Databricks' "Supported foundation models on Mosaic AI Model Serving" page.
SUPPORTED_FAMILIES = (
    "Meta Llama causal LMs (including DeepSeek-R1-Distill-Llama), Mistral, Mixtral, MPT and "
    "DBRX, logged with task llm/v1/completions or llm/v1/chat; GTE and BGE embedding models "
    "logged with task llm/v1/embeddings and metadata={'model_type': 'gte-large' | "
    "'bge-large'} (current list: Databricks' 'Supported foundation models on Mosaic AI "
    "Model Serving')"
)


class ProvisioningPath(enum.StrEnum):
    """How an endpoint for this model is sized."""

    TOKENS_PER_SECOND = "tokens_per_second"  # min/max_provisioned_throughput
    MODEL_UNITS = "model_units"  # provisioned_model_units


@dataclass(frozen=True)
class OptimizationInfo:
    """The answer of ``get-model-optimization-info``, typed."""

    optimizable: bool
    model_type: str | None = None
    throughput_chunk_size: int | None = None
    model_unit_chunk_size: int | None = None

    def __post_init__(self) -> None:
        for field in ("throughput_chunk_size", "model_unit_chunk_size"):
            value = getattr(self, field)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value <= 0
            ):
                raise PtdeployError(
                    f"get-model-optimization-info answered {field}={value!r}; expected a "
                    "positive integer. The serving API answered something this version of "
                    "ptdeploy does not understand."
                )
        if self.optimizable and self.path is None:
            raise PtdeployError(
                "get-model-optimization-info answered optimizable=true without "
                "throughput_chunk_size nor model_unit_chunk_size: cannot size an endpoint."
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OptimizationInfo:
        """Parse the REST answer; a missing ``optimizable`` means not optimizable."""

        def as_int(key: str) -> int | None:
            value = d.get(key)
            # JSON int64 values may arrive as strings through some proxies.
            if isinstance(value, str) and value.strip().isdigit():
                return int(value)
            return value

        return cls(
            optimizable=bool(d.get("optimizable", False)),
            model_type=d.get("model_type"),
            throughput_chunk_size=as_int("throughput_chunk_size"),
            model_unit_chunk_size=as_int("model_unit_chunk_size"),
        )

    def as_dict(self) -> dict[str, Any]:
        """The REST shape back (fields that are set)."""
        out: dict[str, Any] = {"optimizable": self.optimizable}
        for key in ("model_type", "throughput_chunk_size", "model_unit_chunk_size"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    @property
    def path(self) -> ProvisioningPath | None:
        """Which sizing the endpoint needs; None when the answer carries no chunk size.

        ``model_unit_chunk_size`` wins when both are present: the newer families that
        answer with it are only provisioned in model units.
        """
        if self.model_unit_chunk_size is not None:
            return ProvisioningPath.MODEL_UNITS
        if self.throughput_chunk_size is not None:
            return ProvisioningPath.TOKENS_PER_SECOND
        return None

    @property
    def chunk_size(self) -> int | None:
        """The increment of the chosen path (tokens/s or model units)."""
        if self.path is ProvisioningPath.MODEL_UNITS:
            return self.model_unit_chunk_size
        return self.throughput_chunk_size

    def describe(self) -> str:
        """One line for a notebook cell."""
        if not self.optimizable:
            return "not optimizable for provisioned throughput"
        if self.path is ProvisioningPath.MODEL_UNITS:
            return (
                f"optimizable ({self.model_type}): provisioned in model units, "
                f"in steps of {self.model_unit_chunk_size}"
            )
        return (
            f"optimizable ({self.model_type}): provisioned in tokens/s, "
            f"in steps of {self.throughput_chunk_size} tokens/s"
        )


def _check_model_ref(model_name: str, version: int | str) -> str:
    if not isinstance(model_name, str) or not model_name.strip():
        raise PtdeployError(
            f"model_name={model_name!r} is empty: give the registered model name, e.g. "
            "'main.default.llama_completions'."
        )
    text = str(version).strip()
    if isinstance(version, bool) or not text.isdigit() or int(text) < 1:
        raise PtdeployError(
            f"version={version!r} for model {model_name!r} is not a model version: give a "
            "positive integer such as 1 (an alias must be resolved to its version first)."
        )
    return str(int(text))


def get_optimization_info(
    w: WorkspaceClient, model_name: str, version: int | str
) -> OptimizationInfo:
    """Ask the serving API whether ``model_name`` version ``version`` is optimizable.

    Raises ``ModelVersionNotFoundError`` (naming model and version) when the registry has
    no such version.
    """
    version = _check_model_ref(model_name, version)
    path = OPTIMIZATION_INFO_PATH.format(
        name=quote(model_name, safe="."), version=quote(version, safe="")
    )
    try:
        answer = w.api_client.do("GET", path, headers={"Accept": "application/json"})
    except NotFound as exc:
        raise ModelVersionNotFoundError(
            f"model {model_name!r} version {version} was not found by the serving API "
            f"({exc}). Check the three-level name (catalog.schema.model), that the version "
            "exists and finished registering, and that you have access to it."
        ) from exc
    if not isinstance(answer, dict):
        raise PtdeployError(
            f"get-model-optimization-info for {model_name} version {version} answered "
            f"{answer!r}; expected a JSON object."
        )
    return OptimizationInfo.from_dict(answer)


def require_optimizable(
    info: OptimizationInfo, model_name: str, version: int | str
) -> OptimizationInfo:
    """Return ``info`` when the model can be served with provisioned throughput.

    Otherwise raise ``NotOptimizableError`` saying why and what to do: the serving API only
    optimizes some architectures, and only when the model was logged with a task it
    serves.
    """
    if info.optimizable:
        return info
    seen = f" (model_type={info.model_type!r})" if info.model_type else ""
    raise NotOptimizableError(
        f"model {model_name!r} version {version} is not eligible for provisioned throughput"
        f"{seen}: the serving API only optimizes supported architectures, logged with "
        f"MLflow's transformers flavor and an llm/v1 task. Supported: {SUPPORTED_FAMILIES}. "
        "Check the model family (config.json 'architectures') and the task= and metadata= "
        "given to mlflow.transformers.log_model; other models can still be served on a "
        "CPU/GPU workload (workload_size), not with provisioned throughput."
    )


def optimizable_info(w: WorkspaceClient, model_name: str, version: int | str) -> OptimizationInfo:
    """``get_optimization_info`` then ``require_optimizable``: the info of a model that
    can be served with provisioned throughput, or ``NotOptimizableError`` with the reason."""
    return require_optimizable(get_optimization_info(w, model_name, version), model_name, version)
