"""The steps every deployment notebook takes, each one call.

The templates (Llama completions, GTE/BGE embeddings, DeepSeek-R1 chat, deploy from
Unity Catalog) differ in their parameters and prose, not in code: they all call these
functions in the same order. Each step prints what it did, so a notebook run (or a job
run log) reads as a report.

Job tasks: a Databricks job runs the same notebook as three tasks — ``register``,
``deploy``, ``smoke_test`` — selected by the ``steps`` parameter. The registered version
goes from the register task to the next ones through ``dbutils.jobs.taskValues``; outside
a job (a task run alone) the ``debugValue`` is used: the version the ``challenger`` alias
points to.

Promotion: registration moves the ``challenger`` alias only. The deploy step serves the
new version alone, or, with ``canary_percent``, next to the champion with that share of
the traffic. The champion alias (the ``alias`` parameter) moves in the ``promote`` step,
which runs once the smoke test passed (the job's next task; the next cell of a notebook)
and first moves all traffic to the new version. A failed deploy, smoke test or promotion
puts the endpoint back on the version it served before (the champion) and says so.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptdeploy import names, targets
from ptdeploy.capacity import capacity_check, loadtest, planner
from ptdeploy.errors import (
    EndpointNotFoundError,
    ParameterError,
    PromotionError,
    PtdeployError,
    ThroughputError,
)
from ptdeploy.models import model_logging, registry, sources
from ptdeploy.serving import endpoints, gateway, optimization, throughput
from ptdeploy.templates import parameters
from ptdeploy.templates.notebook import (
    ALL_STEPS,
    DEPLOY_TASK,
    JOB_TASKS,
    PROMOTE_TASK,
    REGISTER_TASK,
    SMOKE_TEST_TASK,
    emit_summary,
    get_task_value,
    set_task_values,
)
from ptdeploy.templates.parameters import ParameterSpec, Params

if TYPE_CHECKING:
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.service.serving import ServingEndpointDetailed


def start(spec: ParameterSpec, namespace: dict[str, Any]) -> Params:
    """Resolve the notebook's parameters and point MLflow at the target."""
    p = parameters.resolve(spec, namespace)
    if p.get("steps", ALL_STEPS) != REGISTER_TASK:  # the run will reach the endpoint
        targets.warm_up(p.target)
    experiment = targets.configure_mlflow(p.target)
    print(f"target: {p.target} | registry: {targets.registry_uri(p.target)}", end="")
    print(f" | experiment: {experiment}" if experiment else "")
    return p


def runs(p: Params, step: str) -> bool:
    """Whether this run includes ``step`` (``steps`` = all, or one job task)."""
    if step not in JOB_TASKS:
        raise ParameterError(f"unknown step {step!r}; steps are {', '.join(JOB_TASKS)}")
    selected = p.get("steps", "all")
    return selected == "all" or selected == step


def registered_name(p: Params) -> str:
    name = names.registered_model_name(p.catalog, p.schema, p.model_name)
    return names.check_registered_model_name(
        name, unity_catalog=targets.Target(p.target) is targets.Target.DATABRICKS
    )


# Hugging Face organisations whose models are gated (accept the license, then a token):
# without HF_TOKEN the download fails with a 401 deep inside transformers.
GATED_HUB_ORGS = ("meta-llama", "google/gemma", "mistralai/Mistral-Large")


def require_hub_token(p: Params, namespace: dict[str, Any] | None = None) -> None:
    """A gated hub model needs a token: ``HF_TOKEN`` (the job cluster sets it from a secret
    through ``spark_env_vars``), else the secret read with ``dbutils.secrets`` on
    Databricks. Missing: fail now, naming the secret to create."""
    import os

    from ptdeploy.errors import SecretNotFoundError
    from ptdeploy.templates import bundle
    from ptdeploy.templates.parameters import databricks_dbutils

    source = sources.resolve_source(p.model_source, p.get("model_revision"))
    if not source.is_hub or not p.model_source.startswith(GATED_HUB_ORGS):
        return
    if os.environ.get(bundle.HF_TOKEN_ENV):
        return
    scope, _, key = os.environ.get(bundle.HF_SECRET_ENV, "").partition("/")
    scope, key = scope or bundle.HF_SECRET_SCOPE, key or bundle.HF_SECRET_KEY
    dbutils = databricks_dbutils(namespace)
    if dbutils is not None:
        try:
            token = dbutils.secrets.get(scope=scope, key=key)
        except Exception:
            token = None
        if token:
            os.environ[bundle.HF_TOKEN_ENV] = str.__str__(token)  # huggingface_hub reads it
            return
    raise SecretNotFoundError(
        f"model_source={p.model_source!r} is a gated Hugging Face model and no token is set "
        f"(HF_TOKEN is empty and secret {scope}/{key} was not found). Accept the model's "
        "license on huggingface.co, then store a read token as a Databricks secret: "
        f"`databricks secrets create-scope {scope}` and `databricks secrets put-secret {scope} "
        f"{key}` (the job passes it as HF_TOKEN; other scope/key: --var hf_secret_scope=... "
        "--var hf_secret_key=...). Offline: `ptdeploy secrets put "
        f"{scope} {key}`, or export HF_TOKEN."
    )


def load(p: Params, **kwargs: Any) -> sources.LoadedModel:
    """Load model and tokenizer from ``p.model_source`` (and ``p.model_revision``)."""
    require_hub_token(p)
    loaded = sources.load_model(
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
    loaded: sources.LoadedModel,
    *,
    task: str | None = None,
    model_type: str | None = None,
) -> registry.RegisteredVersion:
    """Log with the transformers flavor, register, wait READY, move the alias."""
    task = task or p.task
    logged = model_logging.log_model(
        loaded, task=task, model_type=model_type, save_pretrained=p.save_pretrained
    )
    registered = registry.register(
        logged.model_uri, registered_name(p), alias=registry.CHALLENGER_ALIAS
    )
    print(
        f"logged run {logged.run_id} ({task}); registered {registered.name} "
        f"version {registered.version}, alias {registered.alias!r} -> {registered.version} "
        f"({p.alias!r} moves once the endpoint serves it and its smoke test passed)"
    )
    set_task_values({"model_name": registered.name, "model_version": registered.version})
    return registered


def registered_version(p: Params) -> registry.RegisteredVersion:
    """The version registered by the job's register task (the challenger's, off a job)."""
    name = registered_name(p)
    debug = registry.alias_version(name, registry.CHALLENGER_ALIAS)
    version = str(get_task_value(REGISTER_TASK, "model_version", debug) or "")
    if not version:
        raise ParameterError(
            f"no registered version of {name!r} to deploy: run the 'register' step first "
            f"(alias {registry.CHALLENGER_ALIAS!r} points nowhere)."
        )
    registry.check_version_exists(name, version)
    print(f"using {name} version {version}")
    return registry.RegisteredVersion(
        name, version, registry.CHALLENGER_ALIAS, f"models:/{name}/{version}", ""
    )


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
    """Optimization info, throughput from chunks, create or update, wait until ready.

    The versions the endpoint served before are handed to the smoke test (task value
    ``previous_versions``); if the update fails, the endpoint goes back to them.
    """
    champion = _canary_champion(p, w, registered)  # bad input fails here, before any change
    gateway.check_inference_table_catalog(w, p)
    info = optimization.optimizable_info(w, registered.name, registered.version)
    print(info.describe())
    plan = throughput.plan_from_info(info, p.min_chunks, p.max_chunks, p.scale_to_zero)
    print(plan.describe())
    print(gateway.describe(p))
    previous = [v for v in served_versions(w, p.endpoint_name) if v != registered.version]
    set_task_values({"previous_versions": previous})
    if champion is not None:
        spec_kwargs = {**_canary_kwargs(p, w, registered, champion, plan), **spec_kwargs}
    try:
        endpoint = serve(p, w, registered.name, registered.version, plan, **spec_kwargs)
    except PtdeployError as exc:
        raise PromotionError(
            f"version {registered.version} of {registered.name} failed to deploy: {exc}\n"
            + rollback(p, w, registered, previous)
        ) from exc
    print(f"endpoint {endpoint.name}: {endpoints.describe_state(endpoint)}")
    return Deployment(endpoint, info, plan)


def _canary_champion(p: Params, w: WorkspaceClient, registered: Any) -> str | None:
    """The champion version a canary splits traffic with (None without a canary).

    A canary needs a previous version other than the one being deployed: the one the
    champion alias (the ``alias`` parameter) points to, or, for a template without one
    (deploy from Unity Catalog), the version the endpoint serves now. Otherwise a
    ``ParameterError`` naming the parameter."""
    percent = gateway.canary_percent(p)
    if not percent:
        return None
    alias = p.get("alias")
    if alias:
        champion = registry.alias_version(registered.name, alias)
        where = f"alias {alias!r}"
    else:
        serving = [v for v in served_versions(w, p.endpoint_name) if v != registered.version]
        champion = serving[-1] if serving else None
        where = f"endpoint {p.endpoint_name}"
    if champion is None or str(champion) == str(registered.version):
        what = (
            f"{where} points to version {champion}, the one being deployed"
            if champion is not None
            else f"{where} gives no previous version of {registered.name}"
        )
        raise ParameterError(
            f"parameter 'canary_percent'={percent}: a canary splits traffic between the "
            f"current champion and the new version, but {what}. Deploy without a canary "
            "first (canary_percent empty or 0): its promotion makes it the champion."
        )
    return str(champion)


def _canary_kwargs(
    p: Params, w: WorkspaceClient, registered: Any, champion: str, plan: Any
) -> dict[str, Any]:
    """Served entities and routes of a canary: the champion keeps ``100 - p`` percent."""
    percent = gateway.canary_percent(p)
    info = optimization.optimizable_info(w, registered.name, champion)
    champion_plan = throughput.plan_from_info(info, p.min_chunks, p.max_chunks, p.scale_to_zero)
    old = endpoints.ServedEntitySpec(registered.name, champion, champion_plan)
    new = endpoints.ServedEntitySpec(registered.name, registered.version, plan)
    print(
        f"canary: {percent}% of the traffic to version {registered.version} ({new.name}), "
        f"{100 - percent}% to the champion version {champion} ({old.name})"
    )
    return {"additional_entities": (old,), "traffic": {new.name: percent, old.name: 100 - percent}}


def previous_versions(p: Params, w: WorkspaceClient, registered: Any) -> list[str]:
    """What the endpoint served before this version: from the deploy task, or (outside a
    job) the version the champion alias points to."""
    alias = p.get("alias")
    champion = registry.alias_version(registered.name, alias) if alias else None
    debug = [champion] if champion and champion != registered.version else []
    value = get_task_value(DEPLOY_TASK, "previous_versions", debug)
    return [str(v) for v in value or []]


def rollback(p: Params, w: WorkspaceClient, registered: Any, previous: list[str]) -> str:
    """Put the endpoint back on the version it served before; say what was done."""
    if not previous:
        return (
            f"No previous version to roll back to: endpoint {p.endpoint_name} is left as it is "
            f"({_state_or_absent(w, p.endpoint_name)}); fix the version and run again."
        )
    version = previous[-1]
    if served_versions(w, p.endpoint_name) == [version]:
        return f"Endpoint {p.endpoint_name} still serves the previous version {version}."
    info = optimization.optimizable_info(w, registered.name, version)
    plan = throughput.plan_from_info(info, p.min_chunks, p.max_chunks, p.scale_to_zero)
    try:
        serve(p, w, registered.name, version, plan)
    except PtdeployError as exc:
        return f"Rolling endpoint {p.endpoint_name} back to version {version} failed too: {exc}"
    return f"Endpoint {p.endpoint_name} rolled back to the previous version {version}."


def _state_or_absent(w: WorkspaceClient, name: str) -> str:
    try:
        return endpoints.describe_state(endpoints.get_endpoint(w, name))
    except Exception:
        return "absent"


@contextlib.contextmanager
def smoke_test_guard(p: Params, w: WorkspaceClient, registered: Any) -> Iterator[None]:
    """Around the smoke test: afterwards the endpoint must be READY and serve this version;
    on any failure, roll the endpoint back to the previous version and raise."""
    try:
        yield
        ep = endpoints.get_endpoint(w, p.endpoint_name)
        if registered.version not in _entity_versions(ep) or not endpoints._is_ready(ep):
            raise PromotionError(
                f"endpoint {p.endpoint_name} is not READY on version {registered.version} "
                f"({endpoints.describe_state(ep)}, serving {_entity_versions(ep)})"
            )
    except Exception as exc:
        previous = previous_versions(p, w, registered)
        raise PromotionError(
            f"smoke test of {registered.name} version {registered.version} on endpoint "
            f"{p.endpoint_name} failed: {exc}\n"
            + rollback(p, w, registered, previous)
            + f" The {p.get('alias') or 'champion'!r} alias was not moved."
        ) from exc


def promote(p: Params, w: WorkspaceClient, registered: Any) -> ServingEndpointDetailed:
    """Make the smoke-tested version the champion: all traffic to it (a canary's split
    ends: the champion's served entity goes), then the champion alias moves to it.

    Run after a passed smoke test (a job's ``promote`` task depends on ``smoke_test``).
    A failure rolls the endpoint back to the previous version and raises."""
    ep = endpoints.get_endpoint(w, p.endpoint_name)
    served = _entity_versions(ep)
    if registered.version not in served or not endpoints._is_ready(ep):
        raise PromotionError(
            f"cannot promote {registered.name} version {registered.version}: endpoint "
            f"{p.endpoint_name} is not READY on it ({endpoints.describe_state(ep)}, serving "
            f"{served}). Run the deploy and smoke_test steps first."
        )
    if served != [registered.version]:
        info = optimization.optimizable_info(w, registered.name, registered.version)
        plan = throughput.plan_from_info(info, p.min_chunks, p.max_chunks, p.scale_to_zero)
        try:
            ep = serve(p, w, registered.name, registered.version, plan)
        except PtdeployError as exc:
            raise PromotionError(
                f"moving all traffic of {p.endpoint_name} to version {registered.version} "
                f"failed: {exc}\n" + rollback(p, w, registered, previous_versions(p, w, registered))
            ) from exc
        print(f"all traffic of {p.endpoint_name} now goes to version {registered.version}")
    alias = p.get("alias")
    if alias:
        registry.set_alias(registered.name, alias, registered.version)
        print(f"promoted: {registered.name} alias {alias!r} -> {registered.version}")
    return ep


def _gateway_kwargs(p: Params) -> dict[str, Any]:
    """``EndpointSpec`` keywords from the gateway and tags parameters."""
    return {"tags": gateway.tags(p), "ai_gateway": gateway.gateway_spec(p)}


def expect_text(p: Params, text: str | None) -> None:
    """The smoke test's expectation: the answer contains ``p.expect`` (when set)."""
    expected = p.get("expect")
    if not text or not text.strip():
        raise PromotionError("the endpoint answered with an empty text")
    if expected and expected.lower() not in text.lower():
        raise PromotionError(f"the answer {text!r} does not contain the expected {expected!r}")


# ------------------------------------------------------------- notebook step cells
# Each template's step cells are one call: the step functions below (and the templates'
# own register/smoke steps in completions, embeddings, reasoning and catalog) check
# whether this run includes the step (a job task runs one), do it, and print what a
# reader of the notebook needs.


def deploy_step(
    p: Params, w: WorkspaceClient, registered: registry.RegisteredVersion, **spec_kwargs: Any
) -> Deployment | None:
    """The deploy step: create or update the endpoint and wait (None when skipped)."""
    if not runs(p, DEPLOY_TASK):
        return None
    deployment = deploy(p, w, registered, **spec_kwargs)
    print("serving versions:", deployment.served_versions)
    return deployment


def smoke_test_step(
    p: Params, w: WorkspaceClient, registered: Any, ask: Callable[[], Any]
) -> Any | None:
    """The smoke-test step: ``ask()`` the endpoint inside ``promotion`` (the champion alias
    moves only when it passes; a failure rolls the endpoint back) and print the answer's
    ``report()``. None when skipped."""
    if not runs(p, SMOKE_TEST_TASK):
        return None
    with smoke_test_guard(p, w, registered):
        answer = ask()
        print(answer.report())
    return answer


def promote_step(p: Params, w: WorkspaceClient, registered: Any) -> None:
    """The promote step: all traffic to the smoke-tested version, then the champion alias
    (``promote``)."""
    if runs(p, PROMOTE_TASK):
        promote(p, w, registered)


def gateway_records_step(p: Params, w: WorkspaceClient) -> dict[str, Any]:
    """Show what the endpoint's AI Gateway recorded: usage rows (tokens per request) and
    inference-table rows, as DataFrames (``ptdeploy.serving.inference_tables``). Returns them by
    name; empty when usage tracking and the inference table are off."""
    from ptdeploy.serving import inference_tables

    frames: dict[str, Any] = {}
    if not runs(p, PROMOTE_TASK) and not runs(p, SMOKE_TEST_TASK):
        return frames
    if not p.get("usage_tracking") and not p.get("inference_table_catalog"):
        print("usage tracking and the inference table are off (see the gateway parameters)")
        return frames
    try:
        if p.get("usage_tracking"):
            frames["usage"] = inference_tables.read_usage(p.endpoint_name, p.target)
        if p.get("inference_table_catalog"):
            table = gateway.payload_table_name(p)
            frames[table] = inference_tables.read_payload(table, p.target)
    except RuntimeError as exc:  # Databricks without a Spark session (a laptop)
        print(f"cannot read the AI Gateway tables here: {exc}")
        return frames
    for name, frame in frames.items():
        print(f"{name}: {len(frame)} row(s)")
        _show(frame.tail(5))
    return frames


def _show(obj: Any) -> None:
    """``display`` in a notebook, ``print`` elsewhere."""
    try:
        from IPython import get_ipython
        from IPython.display import display

        if get_ipython() is not None:
            display(obj)
            return
    except ImportError:
        pass
    print(obj)


def summary_step(
    p: Params, w: WorkspaceClient, registered: Any, answer: Any = None, **extra: Any
) -> None:
    """The last step: delete the endpoint when ``teardown`` is set, then the run's summary
    (what was registered and served, ``extra`` fields, and the answer's ``summary()``)."""
    deleted = teardown(p, w)
    promoted = p.get("alias")  # the champion alias: it moves only after a passed smoke test
    champion = registry.alias_version(registered.name, promoted) if promoted else None
    finish(
        {
            "registered_model": registered.name,
            "version": registered.version,
            "alias": registered.alias,
            **({f"{promoted}_version": champion} if promoted else {}),
            **extra,
            "endpoint": p.endpoint_name,
            "endpoint_served_versions": served_versions(w, p.endpoint_name),
            "endpoint_traffic": traffic(w, p.endpoint_name),
            "endpoint_deleted": deleted,
            **(answer.summary() if answer is not None else {}),
        }
    )


def serve(
    p: Params, w: WorkspaceClient, name: str, version: str, plan: Any, **spec_kwargs: Any
) -> ServingEndpointDetailed:
    """Create or update ``p.endpoint_name`` to serve ``name`` ``version`` with ``plan``."""
    spec_kwargs = {**(_gateway_kwargs(p) if "tags" in p else {}), **spec_kwargs}
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


def traffic(w: WorkspaceClient, endpoint_name: str) -> dict[str, int]:
    """``{served entity name: traffic percentage}`` of the endpoint (empty when absent)."""
    try:
        ep = endpoints.get_endpoint(w, endpoint_name)
    except Exception:
        return {}
    cfg = ep.config.traffic_config if ep.config else None
    routes = (cfg.routes if cfg else None) or []
    return {str(r.served_entity_name or r.served_model_name): r.traffic_percentage for r in routes}


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


def _load_test_task(p: Params, loaded: sources.LoadedModel) -> str:
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
    loaded = sources.load_model(p.model_source)
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
    from ptdeploy.capacity import plots

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
    try:  # inline in a notebook (Jupyter, Databricks); nothing to show in a plain process
        from IPython import get_ipython
        from IPython.display import display

        if get_ipython() is not None:
            for fig in figs.values():
                display(fig)
    except ImportError:
        pass
    return figs


def check_capacity(
    p: Params, target: LoadTestTarget, result: loadtest.LoadTestResult
) -> capacity_check.CapacityCheck | None:
    """The planner meets the load test: print the comparison and the verdict."""
    if target.deployed is None or target.chunk_size is None:
        print(f"capacity check skipped: {target.note}")
        return None
    from ptdeploy.capacity.cost import pricing_from

    check = capacity_check.check_capacity(
        workload(p),
        target.deployed,
        target.chunk_size,
        result,
        headroom=p.headroom,
        pricing=pricing_from(p.get("dbu_per_hour_per_unit"), p.get("price_per_dbu")),
    )
    print("\n".join(check.explain()))
    return check


def load_test_plan(p: Params, target: LoadTestTarget) -> planner.CapacityPlan | None:
    """What the planner proposes for the planned workload on this endpoint's chunk size
    (printed with its arithmetic and, with prices, its cost); None without a chunk size."""
    if target.chunk_size is None:
        print("no tokens/s chunk size for this endpoint:", target.note)
        return None
    from ptdeploy.capacity.cost import pricing_from

    plan = planner.plan_capacity(
        workload(p),
        target.chunk_size,
        headroom=p.headroom,
        pricing=pricing_from(p.get("dbu_per_hour_per_unit"), p.get("price_per_dbu")),
    )
    print("\n".join(plan.explain()))
    return plan


def load_test_summary(
    p: Params,
    target: LoadTestTarget,
    plan: planner.CapacityPlan | None,
    result: loadtest.LoadTestResult,
    check: capacity_check.CapacityCheck | None,
) -> None:
    """The load-test notebook's summary: what was tested, measured, planned and concluded."""
    best = result.best_level(p.p95_latency_target_s)
    deployed = target.deployed
    finish(
        {
            "endpoint": p.endpoint_name,
            "task": target.task.value,
            "deployed_now": target.deployed_now,
            "min_provisioned_throughput": deployed.min_provisioned_throughput if deployed else None,
            "max_provisioned_throughput": deployed.max_provisioned_throughput if deployed else None,
            "chunk_size": target.chunk_size,
            "planned_min_provisioned_throughput": plan.min_provisioned_throughput if plan else None,
            "planned_max_provisioned_throughput": plan.max_provisioned_throughput if plan else None,
            "levels": result.table(),
            "total_requests": result.total_requests,
            "errors": sum(level.errors for level in result.levels),
            "best_concurrency": best.concurrency if best else None,
            "best_total_tokens_per_second": best.total_tokens_per_second if best else None,
            "verdict": check.verdict.value if check else None,
            "capacity_check": check.as_dict() if check else None,
            "planned_cost": plan.cost.as_dict() if plan and plan.cost else None,
            "results_dir": str(result.out_dir),
            "plots": sorted(str(path) for path in result.out_dir.glob("*.png")),
        }
    )
