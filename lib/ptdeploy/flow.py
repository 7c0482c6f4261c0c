"""The steps every deployment notebook takes, each one call.

The templates (Llama completions, GTE/BGE embeddings, DeepSeek-R1 chat, deploy from
Unity Catalog) differ in their parameters and prose, not in code: they all call these
functions in the same order. Each step prints what it did, so a notebook run (or a job
run log) reads as a report.

Job tasks: a Databricks job runs the same notebook as three tasks — ``register``,
``deploy``, ``smoke_test`` — selected by the ``steps`` parameter. The registered version
goes from the register task to the next ones through ``dbutils.jobs.taskValues``; off
Databricks (or when a task runs alone) the ``debugValue`` is used: the version the alias
points to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ptdeploy import (
    endpoints,
    model_logging,
    models,
    names,
    optimization,
    parameters,
    registry,
    targets,
    throughput,
)
from ptdeploy.errors import ParameterError
from ptdeploy.notebook import emit_summary, get_task_value, set_task_values
from ptdeploy.parameters import ParameterSpec, Params

if TYPE_CHECKING:
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.service.serving import ServingEndpointDetailed

# Task keys of the job definitions (resources/*.yml) and the values handed between them.
REGISTER_TASK = "register"
STEPS = ("all", "register", "deploy", "smoke_test")


def start(spec: ParameterSpec, namespace: dict[str, Any]) -> Params:
    """Resolve the notebook's parameters and point MLflow at the target."""
    p = parameters.resolve(spec, namespace)
    experiment = targets.configure_mlflow(p.target)
    print(f"target: {p.target} | registry: {targets.registry_uri(p.target)}", end="")
    print(f" | experiment: {experiment}" if experiment else "")
    return p


def runs(p: Params, step: str) -> bool:
    """Whether this run includes ``step`` (``steps`` = all, or one job task)."""
    if step not in STEPS[1:]:
        raise ParameterError(f"unknown step {step!r}; steps are {', '.join(STEPS[1:])}")
    selected = p.get("steps", "all")
    return selected == "all" or selected == step


def registered_name(p: Params) -> str:
    name = names.registered_model_name(p.catalog, p.schema, p.model_name)
    return names.check_registered_model_name(name, p.target)


def load(p: Params, **kwargs: Any) -> models.LoadedModel:
    """Load model and tokenizer from ``p.model_source`` (and ``p.model_revision``)."""
    loaded = models.load_model(
        p.model_source,
        revision=p.get("model_revision"),
        trust_remote_code=p.get("trust_remote_code", False),
        **kwargs,
    )
    print(
        f"loaded {loaded.source.describe()} | {loaded.architecture} | "
        f"{loaded.model.num_parameters():,} parameters"
    )
    return loaded


def log_and_register(
    p: Params,
    loaded: models.LoadedModel,
    *,
    task: str | None = None,
    model_type: str | None = None,
) -> registry.RegisteredVersion:
    """Log with the transformers flavor, register, wait READY, move the alias."""
    task = task or p.task
    logged = model_logging.log_model(
        loaded, task=task, model_type=model_type, save_pretrained=p.save_pretrained
    )
    registered = registry.register(logged.model_uri, registered_name(p), alias=p.alias)
    print(
        f"logged run {logged.run_id} ({task}); registered {registered.name} "
        f"version {registered.version}, alias {registered.alias!r} -> {registered.version}"
    )
    set_task_values({"model_name": registered.name, "model_version": registered.version})
    return registered


def registered_version(p: Params) -> registry.RegisteredVersion:
    """The version registered by the job's register task (or the alias's, off a job)."""
    name = registered_name(p)
    debug = registry.alias_version(name, p.alias) or ""
    version = str(get_task_value(REGISTER_TASK, "model_version", debug) or "")
    if not version:
        raise ParameterError(
            f"no registered version of {name!r} to deploy: run the 'register' step first "
            f"(alias {p.alias!r} points nowhere)."
        )
    registry.check_version_exists(name, version)
    print(f"using {name} version {version}")
    return registry.RegisteredVersion(name, version, p.alias, f"models:/{name}/{version}", "")


def client(p: Params) -> WorkspaceClient:
    """The workspace client of the target (local: the embedded workspace, started if needed)."""
    w = targets.workspace_client(p.target)
    print(f"workspace: {w.config.host}")
    return w


@dataclass
class Deployment:
    endpoint: ServingEndpointDetailed
    info: optimization.OptimizationInfo
    plan: Any

    @property
    def served_versions(self) -> list[str]:
        entities = (self.endpoint.config.served_entities if self.endpoint.config else None) or []
        return [str(e.entity_version) for e in entities]


def deploy(
    p: Params,
    w: WorkspaceClient,
    registered: registry.RegisteredVersion,
    **spec_kwargs: Any,
) -> Deployment:
    """Optimization info, throughput from chunks, create or update, wait until ready."""
    info = optimization.get_optimization_info(w, registered.name, registered.version)
    optimization.require_optimizable(info, registered.name, registered.version)
    print(info.describe())
    plan = throughput.plan_from_info(info, p.min_chunks, p.max_chunks, p.scale_to_zero)
    print(plan.describe())
    spec = endpoints.EndpointSpec(
        name=p.endpoint_name,
        entity_name=registered.name,
        entity_version=registered.version,
        plan=plan,
        **spec_kwargs,
    )
    endpoint = endpoints.create_or_update(w, spec, timeout=p.wait_timeout_minutes * 60)
    print(f"endpoint {endpoint.name}: {endpoints.describe_state(endpoint)}")
    return Deployment(endpoint, info, plan)


def teardown(p: Params, w: WorkspaceClient) -> bool:
    """Delete the endpoint when ``teardown`` is set; the registered model stays."""
    if not p.teardown:
        return False
    deleted = endpoints.delete_endpoint(w, p.endpoint_name)
    print(f"deleted endpoint {p.endpoint_name}" if deleted else f"{p.endpoint_name} was absent")
    return True


def finish(summary: dict[str, Any]) -> None:
    """Show the run's summary; ``ptdeploy run`` and the next job task read it back."""
    emit_summary(summary)


def served_versions(w: WorkspaceClient, endpoint_name: str) -> list[str]:
    """Model versions the endpoint serves now (empty when it does not exist)."""
    try:
        ep = endpoints.get_endpoint(w, endpoint_name)
    except Exception:
        return []
    entities = (ep.config.served_entities if ep.config else None) or []
    return [str(e.entity_version) for e in entities]
