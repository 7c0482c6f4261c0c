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
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptdeploy import (
    capacity_check,
    endpoints,
    loadtest,
    model_logging,
    models,
    names,
    optimization,
    parameters,
    planner,
    registry,
    targets,
    throughput,
)
from ptdeploy.errors import EndpointNotFoundError, ParameterError, ThroughputError
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
        return _entity_versions(self.endpoint)


def _entity_versions(ep: ServingEndpointDetailed) -> list[str]:
    entities = (ep.config.served_entities if ep.config else None) or []
    return [str(e.entity_version) for e in entities]


def deploy(
    p: Params,
    w: WorkspaceClient,
    registered: registry.RegisteredVersion,
    **spec_kwargs: Any,
) -> Deployment:
    """Optimization info, throughput from chunks, create or update, wait until ready."""
    info = optimization.optimizable_info(w, registered.name, registered.version)
    print(info.describe())
    plan = throughput.plan_from_info(info, p.min_chunks, p.max_chunks, p.scale_to_zero)
    print(plan.describe())
    endpoint = serve(p, w, registered.name, registered.version, plan, **spec_kwargs)
    print(f"endpoint {endpoint.name}: {endpoints.describe_state(endpoint)}")
    return Deployment(endpoint, info, plan)


def serve(
    p: Params, w: WorkspaceClient, name: str, version: str, plan: Any, **spec_kwargs: Any
) -> ServingEndpointDetailed:
    """Create or update ``p.endpoint_name`` to serve ``name`` ``version`` with ``plan``."""
    spec = endpoints.EndpointSpec(
        name=p.endpoint_name, entity_name=name, entity_version=version, plan=plan, **spec_kwargs
    )
    return endpoints.create_or_update(w, spec, timeout=p.wait_timeout_minutes * 60)


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
    return _entity_versions(ep)


# ------------------------------------------------------------------ load-test notebook

LOAD_TEST_CATALOG = "main"
LOAD_TEST_SCHEMA = "default"
# Databricks needs a model_type for embedding models; the local rehearsal deploys with it.
LOAD_TEST_EMBEDDING_MODEL_TYPE = "gte-large"


@dataclass
class LoadTestTarget:
    """The endpoint a load test runs against and what it is provisioned with.

    ``deployed``/``chunk_size`` are None when the endpoint is not sized in provisioned
    tokens/s (model units, workload size): the load test still runs, the capacity check
    is skipped, and ``note`` says why.
    """

    endpoint: ServingEndpointDetailed
    task: loadtest.Task
    deployed_now: bool
    deployed: capacity_check.DeployedThroughput | None
    chunk_size: int | None
    capacity_plan: planner.CapacityPlan | None = None  # set when this run deployed it
    note: str = ""


def workload(p: Params) -> planner.Workload:
    """The workload the planner sizes for, from the notebook's parameters."""
    return planner.Workload(
        peak_requests_per_second=p.peak_requests_per_second,
        rest_requests_per_second=p.rest_requests_per_second,
        mean_input_tokens=p.mean_input_tokens,
        mean_output_tokens=p.mean_output_tokens,
        p95_latency_target_s=p.p95_latency_target_s,
    )


def load_test_target(p: Params, w: WorkspaceClient) -> LoadTestTarget:
    """The endpoint to load-test, ready; deployed first when missing and allowed.

    An existing endpoint is used as it is (waited for when it is still updating). A
    missing one is an error unless ``deploy_if_missing`` (local target only): then
    ``model_source`` is registered and deployed with the min/max the planner proposes for
    the notebook's workload, so the notebook runs standalone.
    """
    name = p.endpoint_name
    plan: planner.CapacityPlan | None = None
    try:
        ep = endpoints.get_endpoint(w, name)
    except EndpointNotFoundError as exc:
        if not p.deploy_if_missing:
            raise EndpointNotFoundError(
                f"{exc} Deploy it with a deployment notebook first, or (target 'local') set "
                f"deploy_if_missing=true to deploy model_source={p.model_source!r} now."
            ) from exc
        ep, plan = _deploy_for_load_test(p, w)
        deployed_now = True
    else:
        deployed_now = False
        # returns at once when READY / NOT_UPDATING; waits out an update in progress
        ep = endpoints.wait_until_ready(w, name, timeout=p.wait_timeout_minutes * 60)
    print(f"endpoint {name}: {endpoints.describe_state(ep)}")
    task = loadtest.detect_task(w, name) if p.task == "auto" else loadtest.parse_task(p.task)
    deployed, chunk, note = _provisioning(w, ep)
    print(f"task: {task.value}")
    print(deployed.describe() if deployed else f"provisioning: {note}")
    if chunk is not None:
        print(f"throughput chunk: {chunk} tokens/s")
    return LoadTestTarget(ep, task, deployed_now, deployed, chunk, plan, note)


def _load_test_task(p: Params, loaded: models.LoadedModel) -> str:
    if p.task != "auto":
        return loadtest.parse_task(p.task).value
    return (
        loadtest.Task.EMBEDDINGS if loaded.kind == "encoder" else loadtest.Task.COMPLETIONS
    ).value


def _deploy_for_load_test(
    p: Params, w: WorkspaceClient
) -> tuple[ServingEndpointDetailed, planner.CapacityPlan]:
    """Register ``p.model_source`` and deploy it with the planner's min/max (local only)."""
    from ptdeploy.targets import Target

    if p.target != Target.LOCAL.value:  # the spec refuses it too; never deploy by accident
        raise ParameterError(
            f"deploy_if_missing=true with target={p.target!r}: only the local target deploys "
            "from the load-test notebook."
        )
    loaded = models.load_model(p.model_source)
    task = _load_test_task(p, loaded)
    model_type = LOAD_TEST_EMBEDDING_MODEL_TYPE if task == loadtest.Task.EMBEDDINGS else None
    logged = model_logging.log_model(loaded, task=task, model_type=model_type)
    model = p.endpoint_name.replace("-", "_").lower()
    name = names.registered_model_name(LOAD_TEST_CATALOG, LOAD_TEST_SCHEMA, model)
    registered = registry.register(logged.model_uri, name)
    print(f"registered {loaded.source.describe()} ({task}) as {name} version {registered.version}")
    info = optimization.optimizable_info(w, name, registered.version)
    if (
        info.throughput_chunk_size is None
        or info.path is not optimization.ProvisioningPath.TOKENS_PER_SECOND
    ):
        raise ParameterError(
            f"model_source={p.model_source!r} is provisioned in model units ({info.describe()}); "
            "the planner sizes tokens/s: deploy it with a deployment notebook instead."
        )
    plan = planner.plan_capacity(workload(p), info.throughput_chunk_size, headroom=p.headroom)
    print(
        f"deploying {p.endpoint_name} with the planner's min/max for the workload: "
        f"{plan.served_entity_fields()}"
    )
    return serve(p, w, name, registered.version, plan.throughput_plan()), plan


def _provisioning(
    w: WorkspaceClient, ep: ServingEndpointDetailed
) -> tuple[capacity_check.DeployedThroughput | None, int | None, str]:
    """Deployed min/max and the chunk size of the served model(s), or why not."""
    try:
        deployed = capacity_check.deployed_throughput(ep)
    except ThroughputError as exc:
        return None, None, str(exc)
    chunks: set[int] = set()
    for entity_name, version in dict.fromkeys(deployed.entities):
        info = optimization.get_optimization_info(w, entity_name, version)
        if not info.optimizable or info.throughput_chunk_size is None:
            return deployed, None, f"{entity_name} version {version}: {info.describe()}"
        chunks.add(info.throughput_chunk_size)
    if len(chunks) != 1:
        return (
            deployed,
            None,
            f"the served entities have different chunk sizes ({sorted(chunks)}): check each "
            "served entity with its own load test",
        )
    return deployed, chunks.pop(), ""


def load_test_out_dir(p: Params) -> Path:
    """``p.out_dir``, else ``<state dir>/loadtest/<endpoint>-<UTC time>``."""
    if p.out_dir:
        return Path(p.out_dir).expanduser()
    from ptdeploy import state

    return state.state_dir() / "loadtest" / f"{p.endpoint_name}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"


def load_test(p: Params, w: WorkspaceClient, target: LoadTestTarget) -> loadtest.LoadTestResult:
    """The bounded load test: each concurrency level stops after ``requests_per_level``
    requests or ``max_seconds_per_level`` seconds; results saved under ``out_dir``."""
    embeddings = target.task is loadtest.Task.EMBEDDINGS
    result = loadtest.run_load_test(
        w,
        p.endpoint_name,
        task=target.task,
        concurrency=tuple(int(level) for level in p.concurrency.split(",")),
        requests_per_level=p.requests_per_level,
        max_seconds_per_level=p.max_seconds_per_level,
        prompt=p.prompt,
        max_tokens=None if embeddings else p.max_tokens,
        out_dir=load_test_out_dir(p),
    )
    print(f"{result.total_requests} requests; results in {result.out_dir}")
    print(result.to_text())
    for kind, count in result.errors_by_kind().items():
        print(f"errors: {count} x {kind}")
    return result


def load_test_plots(
    p: Params, result: loadtest.LoadTestResult, target: LoadTestTarget
) -> dict[str, Any]:
    """Latency and throughput against concurrency (Figures), saved as PNG next to the results."""
    from ptdeploy import plots

    deployed = target.deployed
    provisioned = (
        (deployed.min_provisioned_throughput, deployed.max_provisioned_throughput)
        if deployed
        else None
    )
    figs = plots.plot_load_test(
        result,
        out_dir=result.out_dir,
        p95_latency_target_s=p.p95_latency_target_s,
        provisioned=provisioned,
    )
    print(f"plots saved in {result.out_dir}")
    return figs


def check_capacity(
    p: Params, target: LoadTestTarget, result: loadtest.LoadTestResult
) -> capacity_check.CapacityCheck | None:
    """The planner meets the load test: print the comparison and the verdict."""
    if target.deployed is None or target.chunk_size is None:
        print(f"capacity check skipped: {target.note}")
        return None
    check = capacity_check.check_capacity(
        workload(p), target.deployed, target.chunk_size, result, headroom=p.headroom
    )
    print("\n".join(check.explain()))
    return check
