"""The local workspace server: Databricks' serving REST API, answered on 127.0.0.1.

It is to Databricks Model Serving what moto is to AWS: the same routes, JSON shapes,
states and error codes (checked against the databricks-sdk 0.162.0 dataclasses), so
``WorkspaceClient``, ``mlflow.deployments.get_deploy_client("databricks")``, the
``openai`` client and plain ``requests`` calls work against it unchanged.

Routes (all require ``Authorization: Bearer <token>``)::

    POST   /api/2.0/serving-endpoints                     create
    GET    /api/2.0/serving-endpoints                     list
    GET    /api/2.0/serving-endpoints/{name}              get
    DELETE /api/2.0/serving-endpoints/{name}              delete
    PUT    /api/2.0/serving-endpoints/{name}/config       update config
    PUT    /api/2.0/serving-endpoints/{name}/ai-gateway   AI gateway
    PATCH  /api/2.0/serving-endpoints/{name}/tags         add_tags / delete_tags
    PUT    /api/2.0/serving-endpoints/{name}/rate-limits  (deprecated) rate limits
    GET    /api/2.0/serving-endpoints/get-model-optimization-info/{model}/{version}
    POST   /serving-endpoints/{name}/invocations          query
    POST   /serving-endpoints/chat/completions            OpenAI-style, model = endpoint
    POST   /serving-endpoints/completions
    POST   /serving-endpoints/embeddings

States follow Databricks: a create answers ``NOT_READY`` / ``IN_PROGRESS`` with a
``pending_config``; when every worker of the pending config is loaded the config becomes
``config`` and the endpoint ``READY`` / ``NOT_UPDATING``. An update keeps the old config
serving until the new workers are ready; a worker that fails to load turns the update
into ``UPDATE_FAILED`` (with the worker's error as ``deployment_state_message``) and the
old config keeps serving. Every request is validated before anything is written.

Local differences, on purpose: one worker process per served entity whatever the
provisioned throughput (the throughput is validated and recorded, not used to add
replicas on a 2-core machine); scale-to-zero is recorded but workers stay loaded;
AI gateway rate limits on ``calls`` are enforced per endpoint, token limits, usage
tracking and inference tables are recorded only.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import secrets
import socket
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ptdeploy.workspace import store as st
from ptdeploy.workspace.optimization_info import ModelDescription, ModelVersionNotFound

log = logging.getLogger("ptdeploy.workspace.server")

LOOPBACK = "127.0.0.1"
TASK_CHAT = "llm/v1/chat"
TASK_COMPLETIONS = "llm/v1/completions"
TASK_EMBEDDINGS = "llm/v1/embeddings"
# the request field that identifies each task's request body
TASK_FIELD = {TASK_CHAT: "messages", TASK_COMPLETIONS: "prompt", TASK_EMBEDDINGS: "input"}
MAX_SERVED_ENTITIES = 10
WORKLOAD_SIZES = ("Small", "Medium", "Large")
CREATING_MESSAGE = "Creating resources for served entity."
WELL_KNOWN_CONFIG = "/.well-known/databricks-config"
RECOVERING_MESSAGE = "Loading the served entity again after a restart of the local workspace."


# ------------------------------------------------------------------------ errors


class ApiError(Exception):
    """An error answered as Databricks does: ``{"error_code": ..., "message": ...}``."""

    def __init__(
        self, status: int, error_code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse(
            {"error_code": self.error_code, "message": self.message},
            status_code=self.status,
            headers=self.headers,
        )


class BearerAuth:
    """Every API call needs ``Authorization: Bearer <token>`` (401 without, 403 if wrong).

    A plain ASGI middleware rather than ``@app.middleware("http")``: Starlette's
    ``BaseHTTPMiddleware`` runs each request in an extra task group and re-streams the
    response, which cost about 15 % of the requests/s of small embedding requests on
    2 cores. ``/.well-known/databricks-config`` (host discovery, public on Databricks
    too: the SDK probes it before any authenticated call) answers without a token.
    """

    def __init__(self, app: Any, token: bytes) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == WELL_KNOWN_CONFIG and scope["method"] == "GET":
            await JSONResponse({"oidc_endpoint": ""})(scope, receive, send)
            return
        header = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        scheme, _, credential = header.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            response = ApiError(
                401,
                "UNAUTHENTICATED",
                "Credential was not sent or was of an unsupported type for this API.",
                headers={"WWW-Authenticate": 'Bearer realm="ptdeploy local workspace"'},
            ).response()
        elif not secrets.compare_digest(credential.strip().encode(), self.token):
            response = ApiError(403, "PERMISSION_DENIED", "Invalid access token.").response()
        else:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)


def invalid(message: str) -> ApiError:
    return ApiError(400, "INVALID_PARAMETER_VALUE", message)


def not_found(name: str) -> ApiError:
    return ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"Endpoint with name '{name}' does not exist.")


# -------------------------------------------------------------- collaborators


class Worker(Protocol):
    """One inference worker process (``ptdeploy.workspace.worker.EntityWorker``)."""

    @property
    def state(self) -> str: ...  # LOADING | READY | FAILED | STOPPED

    @property
    def error(self) -> str | None: ...

    @property
    def task(self) -> str | None: ...

    def start(self) -> None: ...

    async def infer(self, body: dict[str, Any]) -> dict[str, Any]: ...

    def stop(self) -> None: ...


class Catalog(Protocol):
    """Model versions of the registry (``optimization_info.RegistryCatalog``)."""

    def describe(self, name: str, version: str) -> ModelDescription: ...


WorkerFactory = Callable[[st.ServedEntity], Worker]


BATCHING_ENV = "PTDEPLOY_BATCHING"


def batching_enabled() -> bool:
    """Whether new workers batch concurrent requests: ``$PTDEPLOY_BATCHING`` (default on).

    ``PTDEPLOY_BATCHING=0`` (or ``false``/``off``/``no``) in the environment that starts
    the server makes every worker serve one request at a time: the baseline the serving
    benchmarks compare batching against. Read when a worker is created, in the server
    process.
    """
    return os.environ.get(BATCHING_ENV, "1").strip().lower() not in ("0", "false", "off", "no")


def entity_worker_factory(tracking_uri: str) -> WorkerFactory:
    """Real workers: one ``EntityWorker`` process per served entity."""

    def make(entity: st.ServedEntity) -> Worker:
        from ptdeploy.workspace.worker import EntityWorker

        return EntityWorker(
            entity.name,
            entity.entity_name,
            entity.entity_version,
            tracking_uri=tracking_uri,
            batching=batching_enabled(),
        )

    return make


def _invalid_request_error() -> type[BaseException] | None:
    try:
        from ptdeploy.workspace.schemas import InvalidRequestError
    except ImportError:  # engine not installed: nothing raises it
        return None
    return InvalidRequestError


# ------------------------------------------------------------------ validation


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_field(value: Any, field: str) -> int:
    """An integer as Databricks' JSON accepts it (a number, or a string of digits)."""
    if _is_int(value):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    raise invalid(f"{field}={value!r} is not valid: expected an integer (tokens per second).")


def _bool_field(value: Any, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise invalid(f"{field}={value!r} is not valid: expected true or false.")


def _str_field(value: Any, field: str) -> str:
    if isinstance(value, str) and value.strip():
        return value.strip()
    if value is None:
        raise invalid(f"{field} is required.")
    raise invalid(f"{field}={value!r} is not valid: expected a non-empty string.")


def check_endpoint_name(name: Any) -> str:
    if name is None or name == "":
        raise invalid("name is required: the name of the serving endpoint.")
    if not isinstance(name, str) or not st.ENDPOINT_NAME.match(name):
        raise invalid(
            f"name={name!r} is not a valid endpoint name: use 1 to 63 letters, digits, "
            "dashes ('-') and underscores ('_'), e.g. 'llama-completions'."
        )
    return name


def default_served_entity_name(entity_name: str, entity_version: str) -> str:
    """Databricks' default: ``<model>-<version>`` with the last level of a UC name.

    (``system.ai.meta_llama_v3_1_8b_instruct`` version 3 is served as
    ``meta_llama_v3_1_8b_instruct-3``.)
    """
    base = entity_name.rsplit(".", 1)[-1]
    cleaned = "".join(c if c.isalnum() or c in "-_" else "-" for c in base)
    return f"{cleaned}-{entity_version}"


def _multiples(chunk: int) -> str:
    return f"{chunk}, {2 * chunk}, {3 * chunk}, ..."


def parse_served_entities(
    raw: Any,
    *,
    field: str,
    catalog: Catalog,
    creator: str,
    now_ms: int,
) -> list[st.ServedEntity]:
    """Validate ``served_entities`` (or legacy ``served_models``) completely."""
    if raw is None:
        raise invalid(
            f"{field} is required: a list of served entities such as "
            '[{"entity_name": "catalog.schema.model", "entity_version": "1", '
            '"min_provisioned_throughput": 0, "max_provisioned_throughput": <chunk size>}].'
        )
    if not isinstance(raw, list) or not raw:
        raise invalid(
            f"{field}={raw!r} is not valid: expected a non-empty list of served entities."
        )
    if len(raw) > MAX_SERVED_ENTITIES:
        raise invalid(
            f"{field} has {len(raw)} served entities; an endpoint serves at most {MAX_SERVED_ENTITIES}."
        )
    entities: list[st.ServedEntity] = []
    for i, item in enumerate(raw):
        entities.append(
            _parse_served_entity(
                item, f"{field}[{i}]", catalog=catalog, creator=creator, now_ms=now_ms
            )
        )
    names = [e.name for e in entities]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise invalid(
            f"{field}: served entity name(s) {', '.join(dupes)} appear more than once; give each "
            "served entity a unique 'name'."
        )
    tasks = {e.task for e in entities}
    if len(tasks) > 1:
        detail = ", ".join(f"{e.name}: {e.task}" for e in entities)
        raise invalid(
            f"{field}: all served entities of an endpoint must have the same task; got {detail}."
        )
    return entities


def _parse_served_entity(
    item: Any, field: str, *, catalog: Catalog, creator: str, now_ms: int
) -> st.ServedEntity:
    if not isinstance(item, dict):
        raise invalid(f"{field}={item!r} is not valid: expected an object.")
    if item.get("external_model") is not None:
        raise invalid(
            f"{field}.external_model is not supported by the local workspace: it serves "
            "models of the local registry (entity_name, entity_version)."
        )
    # served_models (deprecated) name them model_name / model_version
    entity_key = (
        "entity_name" if "entity_name" in item or "model_name" not in item else "model_name"
    )
    version_key = (
        "entity_version"
        if "entity_version" in item or "model_version" not in item
        else "model_version"
    )
    entity_name = _str_field(item.get(entity_key), f"{field}.{entity_key}")
    raw_version = item.get(version_key)
    if raw_version is None:
        raise invalid(f"{field}.{version_key} is required: the registered model version, e.g. '1'.")
    version = (
        str(raw_version).strip() if _is_int(raw_version) or isinstance(raw_version, str) else None
    )
    if not version or not version.isdigit():
        raise invalid(
            f"{field}.{version_key}={raw_version!r} is not valid: expected a version number such as '1'."
        )
    try:
        desc = catalog.describe(entity_name, version)
    except ModelVersionNotFound as exc:
        raise invalid(f"{field}: {exc}") from exc
    if desc.task not in TASK_FIELD:
        raise invalid(
            f"{field}: model {entity_name} version {version} was logged with task "
            f"{desc.task!r}; the local workspace serves models logged with task "
            f"{', '.join(TASK_FIELD)} (mlflow.transformers.log_model(task=...))."
        )
    name = item.get("name")
    if name is None:
        name = default_served_entity_name(entity_name, version)
    elif not isinstance(name, str) or not st.ENDPOINT_NAME.match(name):
        raise invalid(
            f"{field}.name={name!r} is not valid: a served entity name uses 1 to 63 letters, "
            "digits, dashes and underscores."
        )
    if item.get("provisioned_model_units") is not None:
        raise invalid(
            f"{field}.provisioned_model_units is not valid for {entity_name} version {version}: "
            "get-model-optimization-info answers a throughput_chunk_size for it, so give "
            "min_provisioned_throughput / max_provisioned_throughput (tokens per second) instead."
        )
    has_min = item.get("min_provisioned_throughput") is not None
    has_max = item.get("max_provisioned_throughput") is not None
    workload_size = item.get("workload_size")
    scale_to_zero = _bool_field(
        item.get("scale_to_zero_enabled", False), f"{field}.scale_to_zero_enabled"
    )
    workload_type = item.get("workload_type")
    if workload_type is not None and not isinstance(workload_type, str):
        raise invalid(
            f"{field}.workload_type={workload_type!r} is not valid: expected a string such as 'CPU'."
        )
    env = item.get("environment_vars")
    if env is not None and (
        not isinstance(env, dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
    ):
        raise invalid(
            f"{field}.environment_vars is not valid: expected an object of string values."
        )
    entity = st.ServedEntity(
        name=name,
        entity_name=entity_name,
        entity_version=version,
        task=desc.task,
        scale_to_zero_enabled=scale_to_zero,
        workload_type=workload_type,
        environment_vars=env,
        creator=creator,
        creation_timestamp=now_ms,
    )
    if has_min or has_max:
        if workload_size is not None:
            raise invalid(
                f"{field}: give either workload_size or min/max_provisioned_throughput, not both "
                "(provisioned throughput sizes the endpoint in tokens per second)."
            )
        if not desc.optimizable:
            raise invalid(
                f"{field}: model {entity_name} version {version} is not eligible for provisioned "
                f"throughput: {desc.reason or 'get-model-optimization-info answers optimizable=false'}. "
                "Remove min/max_provisioned_throughput and give workload_size ('Small', "
                "'Medium', 'Large') to serve it without provisioned throughput."
            )
        return replace(entity, **_throughput(item, field, desc, scale_to_zero))
    if workload_size is None:
        hint = (
            f"min_provisioned_throughput and max_provisioned_throughput (multiples of "
            f"{desc.throughput_chunk_size} tokens/s for this model: {_multiples(desc.throughput_chunk_size or 10)})"
            if desc.optimizable
            else "workload_size ('Small', 'Medium' or 'Large')"
        )
        raise invalid(f"{field}: the compute size is missing; give {hint}.")
    if workload_size not in WORKLOAD_SIZES:
        raise invalid(
            f"{field}.workload_size={workload_size!r} is not valid; use one of {', '.join(WORKLOAD_SIZES)}."
        )
    return replace(entity, workload_size=workload_size)


def _throughput(
    item: dict[str, Any], field: str, desc: ModelDescription, scale_to_zero: bool
) -> dict[str, int]:
    chunk = int(desc.throughput_chunk_size or 1)
    raw_max = item.get("max_provisioned_throughput")
    if raw_max is None:
        raise invalid(
            f"{field}.max_provisioned_throughput is required with min_provisioned_throughput: "
            f"a multiple of the throughput chunk size {chunk} ({_multiples(chunk)})."
        )
    hi = _int_field(raw_max, f"{field}.max_provisioned_throughput")
    raw_min = item.get("min_provisioned_throughput")
    lo = 0 if raw_min is None else _int_field(raw_min, f"{field}.min_provisioned_throughput")
    model = f"{desc.name} version {desc.version}"
    for key, value in (("min_provisioned_throughput", lo), ("max_provisioned_throughput", hi)):
        if value < 0:
            raise invalid(
                f"{field}.{key}={value} is negative; it is in tokens per second, 0 or more."
            )
        if value % chunk:
            lower = value // chunk * chunk
            raise invalid(
                f"{field}.{key}={value} is not a multiple of the throughput chunk size {chunk} of "
                f"{model}; valid values: {_multiples(chunk)} (nearest: {lower} or {lower + chunk})."
            )
    if hi == 0:
        raise invalid(
            f"{field}.max_provisioned_throughput=0 is not valid: it must be at least one chunk, "
            f"{chunk} tokens/s for {model}."
        )
    if lo > hi:
        raise invalid(
            f"{field}.min_provisioned_throughput={lo} is greater than "
            f"max_provisioned_throughput={hi}; min must be <= max."
        )
    if scale_to_zero and lo > 0:
        raise invalid(
            f"{field}: scale_to_zero_enabled=true needs min_provisioned_throughput=0 (got {lo}); "
            "set min to 0 or disable scale to zero."
        )
    return {"min_provisioned_throughput": lo, "max_provisioned_throughput": hi}


def parse_routes(raw: Any, entities: list[st.ServedEntity], field: str) -> list[st.Route]:
    """``traffic_config.routes``; default: 100% to a single entity, an even split otherwise."""
    names = [e.name for e in entities]
    if raw is None:
        share, rest = divmod(100, len(names))
        return [st.Route(n, share + (1 if i < rest else 0)) for i, n in enumerate(names)]
    if not isinstance(raw, dict):
        raise invalid(f"{field}={raw!r} is not valid: expected an object with 'routes'.")
    routes_raw = raw.get("routes")
    if not isinstance(routes_raw, list) or not routes_raw:
        raise invalid(
            f"{field}.routes is required: a list such as "
            f'[{{"served_entity_name": "{names[0]}", "traffic_percentage": 100}}].'
        )
    routes: list[st.Route] = []
    for i, r in enumerate(routes_raw):
        f = f"{field}.routes[{i}]"
        if not isinstance(r, dict):
            raise invalid(f"{f}={r!r} is not valid: expected an object.")
        target = r.get("served_entity_name", r.get("served_model_name"))
        if target not in names:
            raise invalid(
                f"{f}.served_entity_name={target!r} names no served entity of this config; "
                f"valid names: {', '.join(names)}."
            )
        pct = (
            _int_field(r.get("traffic_percentage"), f"{f}.traffic_percentage")
            if r.get("traffic_percentage") is not None
            else None
        )
        if pct is None or not 0 <= pct <= 100:
            raise invalid(
                f"{f}.traffic_percentage={r.get('traffic_percentage')!r} is not valid: an integer from 0 to 100."
            )
        if any(x.served_entity_name == target for x in routes):
            raise invalid(f"{f}: served entity {target!r} has more than one route.")
        routes.append(st.Route(target, pct))
    total = sum(r.traffic_percentage for r in routes)
    if total != 100:
        detail = ", ".join(f"{r.served_entity_name}={r.traffic_percentage}" for r in routes)
        raise invalid(
            f"{field}.routes: traffic percentages must add up to 100; got {total} ({detail})."
        )
    return routes


def parse_tags(raw: Any, field: str) -> list[dict[str, str]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise invalid(
            f"{field}={raw!r} is not valid: expected a list of {{'key', 'value'}} objects."
        )
    tags: dict[str, dict[str, str]] = {}
    for i, t in enumerate(raw):
        if not isinstance(t, dict) or not isinstance(t.get("key"), str) or not t["key"]:
            raise invalid(
                f"{field}[{i}]={t!r} is not valid: expected {{'key': <non-empty string>, 'value': <string>}}."
            )
        value = t.get("value")
        if value is not None and not isinstance(value, str):
            raise invalid(f"{field}[{i}].value={value!r} is not valid: expected a string.")
        tags[t["key"]] = {"key": t["key"], **({"value": value} if value is not None else {})}
    return list(tags.values())


_RENEWAL = ("minute",)
_RATE_KEYS = ("user", "endpoint", "user_group", "service_principal")


def parse_rate_limits(raw: Any, field: str, *, gateway: bool) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise invalid(f"{field}={raw!r} is not valid: expected a list of rate limits.")
    out = []
    for i, r in enumerate(raw):
        f = f"{field}[{i}]"
        if not isinstance(r, dict):
            raise invalid(f"{f}={r!r} is not valid: expected an object.")
        if r.get("renewal_period") not in _RENEWAL:
            raise invalid(
                f"{f}.renewal_period={r.get('renewal_period')!r} is not valid; use 'minute'."
            )
        if r.get("key") is not None and r.get("key") not in _RATE_KEYS:
            raise invalid(
                f"{f}.key={r.get('key')!r} is not valid; use one of {', '.join(_RATE_KEYS)}."
            )
        limit = {k: v for k, v in r.items() if v is not None}
        if r.get("calls") is None and (not gateway or r.get("tokens") is None):
            raise invalid(f"{f}: give calls{' or tokens' if gateway else ''} (per renewal_period).")
        for key in ("calls", "tokens"):
            if r.get(key) is not None:
                value = _int_field(r[key], f"{f}.{key}")
                if value < 0:
                    raise invalid(f"{f}.{key}={value} is negative.")
                limit[key] = value
        out.append(limit)
    return out


def parse_ai_gateway(raw: Any, field: str = "ai_gateway") -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise invalid(f"{field}={raw!r} is not valid: expected an object.")
    known = (
        "usage_tracking_config",
        "inference_table_config",
        "rate_limits",
        "guardrails",
        "fallback_config",
    )
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise invalid(f"{field}: unknown field(s) {', '.join(unknown)}; valid: {', '.join(known)}.")
    gw = {k: v for k, v in raw.items() if v is not None}
    for key in ("usage_tracking_config", "inference_table_config", "guardrails", "fallback_config"):
        if key in gw and not isinstance(gw[key], dict):
            raise invalid(f"{field}.{key}={gw[key]!r} is not valid: expected an object.")
        if key in gw and "enabled" in gw[key]:
            gw[key]["enabled"] = _bool_field(gw[key]["enabled"], f"{field}.{key}.enabled")
    if "rate_limits" in gw:
        gw["rate_limits"] = parse_rate_limits(
            gw["rate_limits"], f"{field}.rate_limits", gateway=True
        )
    return gw


# ------------------------------------------------------------------- routing


class TrafficSplitter:
    """Smooth weighted round-robin over routes (nginx's): deterministic, and over any
    100 consecutive requests each served entity gets exactly its traffic percentage."""

    def __init__(self, routes: Iterable[st.Route]) -> None:
        self.weights = {
            r.served_entity_name: r.traffic_percentage for r in routes if r.traffic_percentage > 0
        }
        self.current = dict.fromkeys(self.weights, 0)

    def next(self, available: set[str]) -> str | None:
        candidates = {k: w for k, w in self.weights.items() if k in available}
        if not candidates:
            return None
        total = sum(candidates.values())
        for k, w in candidates.items():
            self.current[k] += w
        best = max(candidates, key=lambda k: self.current[k])
        self.current[best] -= total
        return best


# ------------------------------------------------------------------- manager


class EndpointManager:
    """Endpoints, their workers and their states; every mutation is persisted."""

    def __init__(
        self,
        store: st.EndpointStore,
        catalog: Catalog,
        worker_factory: WorkerFactory,
        *,
        clock: Callable[[], float] = time.time,
        creator: str | None = None,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.worker_factory = worker_factory
        self.clock = clock
        self.creator = creator or f"{getpass.getuser()}@localhost"
        self.lock = threading.RLock()
        self.records: dict[str, st.EndpointRecord] = {}
        self.active: dict[str, dict[str, Worker]] = {}
        self.pending: dict[str, dict[str, Worker]] = {}
        self.recovering: set[str] = set()
        self.splitters: dict[str, TrafficSplitter] = {}
        self.calls: dict[str, deque[float]] = {}

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # ---- lifecycle

    def resume(self) -> None:
        """Load persisted endpoints and start their workers again (NOT_READY -> READY)."""
        with self.lock:
            for rec in self.store.load_all():
                self.records[rec.name] = rec
                try:
                    if rec.config is not None:
                        self.active[rec.name] = self._start_workers(rec.config.served_entities)
                        self.recovering.add(rec.name)
                        self.splitters[rec.name] = TrafficSplitter(rec.config.routes)
                    if rec.pending_config is not None and rec.config_update == st.IN_PROGRESS:
                        self.pending[rec.name] = self._start_workers(
                            rec.pending_config.served_entities, reuse=self._reuse(rec)
                        )
                except Exception:  # one endpoint that cannot start must not stop the rest
                    log.exception("endpoint %s: cannot start its workers again", rec.name)
                    continue
                log.info("resumed endpoint %s (%s)", rec.name, rec.config_update)

    def shutdown(self) -> None:
        with self.lock:
            workers = self._all_workers()
            self.active.clear()
            self.pending.clear()
        _stop_all(workers)

    def _all_workers(self) -> list[Worker]:
        seen: dict[int, Worker] = {}
        for group in (*self.active.values(), *self.pending.values()):
            for w in group.values():
                seen[id(w)] = w
        return list(seen.values())

    def _start_workers(
        self,
        entities: list[st.ServedEntity],
        reuse: tuple[st.EndpointConfig, dict[str, Worker]] | None = None,
    ) -> dict[str, Worker]:
        """One worker per entity; a live worker of ``reuse`` serving the same model under
        the same name is kept (a throughput or traffic change needs no reload)."""
        workers: dict[str, Worker] = {}
        for e in entities:
            if reuse is not None:
                old_config, old_workers = reuse
                old = old_config.entity(e.name)
                current = old_workers.get(e.name)
                if (
                    old is not None
                    and current is not None
                    and old.same_deployment(e)
                    and current.state in ("LOADING", "READY")
                ):
                    workers[e.name] = current
                    continue
            try:
                worker = self.worker_factory(e)
                worker.start()
            except BaseException:
                reused = {id(w) for w in (reuse[1].values() if reuse else ())}
                _stop_all(w for w in workers.values() if id(w) not in reused)
                raise
            workers[e.name] = worker
        return workers

    def _reuse(self, rec: st.EndpointRecord) -> tuple[st.EndpointConfig, dict[str, Worker]] | None:
        if rec.config is None or rec.name not in self.active:
            return None
        return rec.config, self.active[rec.name]

    # ---- API operations (sync: called from a thread pool)

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        name = check_endpoint_name(body.get("name"))
        now = self.now_ms()
        config = body.get("config")
        if config is None:
            raise invalid(
                "config is required: {'served_entities': [{'entity_name': ..., "
                "'entity_version': ..., 'min_provisioned_throughput': ..., "
                "'max_provisioned_throughput': ...}]}."
            )
        if not isinstance(config, dict):
            raise invalid(f"config={config!r} is not valid: expected an object.")
        with self.lock:
            if name in self.records:
                raise ApiError(
                    409, "RESOURCE_ALREADY_EXISTS", f"Endpoint with name '{name}' already exists."
                )
        pending = self._parse_config(config, "config", config_version=1, now=now)
        tags = parse_tags(body.get("tags"), "tags")
        gateway = (
            parse_ai_gateway(body["ai_gateway"]) if body.get("ai_gateway") is not None else None
        )
        rate_limits = (
            parse_rate_limits(body.get("rate_limits"), "rate_limits", gateway=False) or None
        )
        description = body.get("description")
        if description is not None and not isinstance(description, str):
            raise invalid(f"description={description!r} is not valid: expected a string.")
        rec = st.EndpointRecord(
            name=name,
            id=uuid.uuid4().hex,
            creator=self.creator,
            creation_timestamp=now,
            last_updated_timestamp=now,
            pending_config=pending,
            config_update=st.IN_PROGRESS,
            tags=tags,
            ai_gateway=gateway,
            rate_limits=rate_limits,
            description=description,
            route_optimized=bool(body.get("route_optimized") or False),
        )
        with self.lock:
            if name in self.records:  # created concurrently while validating
                raise ApiError(
                    409, "RESOURCE_ALREADY_EXISTS", f"Endpoint with name '{name}' already exists."
                )
            workers = self._start_workers(pending.served_entities)
            self._persist_or_stop(rec, workers, keep=())
            self.records[name] = rec
            self.pending[name] = workers
            log.info("created endpoint %s (config version 1)", name)
            return self.render(rec)

    def _parse_config(
        self,
        config: dict[str, Any],
        field: str,
        *,
        config_version: int,
        now: int,
        current: st.EndpointConfig | None = None,
    ) -> st.EndpointConfig:
        if config.get("auto_capture_config") is not None:
            log.info("auto_capture_config (legacy inference tables) is ignored locally")
        raw_entities = config.get("served_entities")
        key = "served_entities"
        if raw_entities is None and config.get("served_models") is not None:
            raw_entities, key = config["served_models"], "served_models"
        prefix = f"{field}." if field else ""
        if raw_entities is None and current is not None:
            entities = [replace(e, failed_message=None) for e in current.served_entities]
        else:
            entities = parse_served_entities(
                raw_entities,
                field=f"{prefix}{key}",
                catalog=self.catalog,
                creator=self.creator,
                now_ms=now,
            )
        routes = parse_routes(config.get("traffic_config"), entities, f"{prefix}traffic_config")
        return st.EndpointConfig(entities, routes, config_version=config_version, start_time=now)

    def get(self, name: str) -> dict[str, Any]:
        with self.lock:
            return self.render(self._record(name))

    def list(self) -> dict[str, Any]:
        with self.lock:
            return {"endpoints": [self.render_summary(r) for r in self.records.values()]}

    def delete(self, name: str) -> dict[str, Any]:
        with self.lock:
            self._record(name)
            del self.records[name]
            workers = {
                id(w): w
                for g in (self.active.pop(name, {}), self.pending.pop(name, {}))
                for w in g.values()
            }
            self.splitters.pop(name, None)
            self.recovering.discard(name)
            self.calls.pop(name, None)
            self.store.delete(name)
            log.info("deleted endpoint %s", name)
        _stop_all(workers.values())
        return {}

    def update_config(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        now = self.now_ms()
        with self.lock:
            rec = self._record(name)
            self._check_not_updating(rec)
            current = rec.config or rec.pending_config
            version = max(c.config_version for c in (rec.config, rec.pending_config) if c) + 1
        if (
            body.get("served_entities") is None
            and body.get("served_models") is None
            and body.get("traffic_config") is None
        ):
            raise invalid(
                "served_entities is required (or traffic_config to change only the routes of "
                "the current served entities)."
            )
        pending = self._parse_config(body, "", config_version=version, now=now, current=current)
        with self.lock:
            rec = self._record(name)
            self._check_not_updating(rec)  # another update may have won the race
            new = replace(
                rec,
                pending_config=pending,
                config_update=st.IN_PROGRESS,
                last_updated_timestamp=now,
            )
            workers = self._start_workers(pending.served_entities, reuse=self._reuse(rec))
            self._persist_or_stop(new, workers, keep=self.active.get(name, {}).values())
            self.records[name] = new
            self.pending[name] = workers
            log.info("updating endpoint %s to config version %d", name, version)
            return self.render(new)

    def _persist_or_stop(
        self, rec: st.EndpointRecord, workers: dict[str, Worker], keep: Iterable[Worker]
    ) -> None:
        """Write ``rec``; if that fails, stop the workers just started for it (the ones in
        ``keep`` serve the current config) so a failed call leaves nothing behind."""
        try:
            self.store.put(rec)
        except BaseException:
            kept = {id(w) for w in keep}
            _stop_all(w for w in workers.values() if id(w) not in kept)
            raise

    def _check_not_updating(self, rec: st.EndpointRecord) -> None:
        if rec.config_update == st.IN_PROGRESS:
            raise ApiError(
                409,
                "RESOURCE_CONFLICT",
                f"Endpoint '{rec.name}' has a config update in progress (config version "
                f"{rec.pending_config.config_version if rec.pending_config else '?'}); wait until "
                "state.config_update is no longer IN_PROGRESS, then update it again.",
            )

    def put_ai_gateway(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        gateway = parse_ai_gateway(body, "ai_gateway")
        with self.lock:
            rec = self._record(name)
            new = replace(rec, ai_gateway=gateway or None, last_updated_timestamp=self.now_ms())
            self.store.put(new)
            self.records[name] = new
        return gateway

    def patch_tags(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        add = parse_tags(body.get("add_tags"), "add_tags")
        delete = body.get("delete_tags", body.get("delete_keys"))
        if delete is not None and (
            not isinstance(delete, list) or not all(isinstance(k, str) for k in delete)
        ):
            raise invalid(f"delete_tags={delete!r} is not valid: expected a list of tag keys.")
        with self.lock:
            rec = self._record(name)
            tags = {t["key"]: t for t in rec.tags}
            for key in delete or []:
                tags.pop(key, None)
            for t in add:
                tags[t["key"]] = t
            new = replace(rec, tags=list(tags.values()), last_updated_timestamp=self.now_ms())
            self.store.put(new)
            self.records[name] = new
            return {"tags": new.tags}

    def put_rate_limits(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        limits = parse_rate_limits(body.get("rate_limits"), "rate_limits", gateway=False)
        with self.lock:
            rec = self._record(name)
            new = replace(rec, rate_limits=limits or None, last_updated_timestamp=self.now_ms())
            self.store.put(new)
            self.records[name] = new
        return {"rate_limits": limits}

    def _record(self, name: str) -> st.EndpointRecord:
        rec = self.records.get(name)
        if rec is None:
            raise not_found(name)
        return rec

    # ---- state machine

    def reconcile(self) -> list[Worker]:
        """Advance updates whose workers finished loading; return the workers to stop."""
        to_stop: list[Worker] = []
        with self.lock:
            for name, rec in list(self.records.items()):
                if rec.config is not None and name in self.recovering:
                    workers = self.active.get(name, {})
                    if all(w.state != "LOADING" for w in workers.values()):
                        self.recovering.discard(name)
                if rec.config_update != st.IN_PROGRESS or rec.pending_config is None:
                    continue
                workers = self.pending.get(name, {})
                entities = rec.pending_config.served_entities
                failed = [
                    (e, workers.get(e.name)) for e in entities if _failed(workers.get(e.name))
                ]
                if failed:
                    self._fail_update(rec, failed, to_stop)
                elif all(
                    workers.get(e.name) is not None and workers[e.name].state == "READY"
                    for e in entities
                ):
                    self._swap(rec, to_stop)
        return to_stop

    def _fail_update(
        self,
        rec: st.EndpointRecord,
        failed: list[tuple[st.ServedEntity, Worker | None]],
        to_stop: list[Worker],
    ) -> None:
        assert rec.pending_config is not None
        messages = {
            e.name: (w.error if w is not None else None) or "the worker stopped while loading"
            for e, w in failed
        }
        entities = [
            replace(e, failed_message=messages[e.name]) if e.name in messages else e
            for e in rec.pending_config.served_entities
        ]
        new = replace(
            rec,
            pending_config=replace(rec.pending_config, served_entities=entities),
            config_update=st.UPDATE_FAILED,
        )
        self.store.put(new)  # first: if it fails, nothing below changed (retried next round)
        active_ids = {id(w) for w in self.active.get(rec.name, {}).values()}
        to_stop.extend(
            w for w in self.pending.pop(rec.name, {}).values() if id(w) not in active_ids
        )
        self.records[rec.name] = new
        log.warning(
            "endpoint %s: config version %d failed: %s",
            rec.name,
            rec.pending_config.config_version,
            messages,
        )

    def _swap(self, rec: st.EndpointRecord, to_stop: list[Worker]) -> None:
        new = replace(
            rec, config=rec.pending_config, pending_config=None, config_update=st.NOT_UPDATING
        )
        self.store.put(new)  # first: if it fails, nothing below changed (retried next round)
        new_workers = self.pending.pop(rec.name, {})
        new_ids = {id(w) for w in new_workers.values()}
        to_stop.extend(w for w in self.active.get(rec.name, {}).values() if id(w) not in new_ids)
        self.active[rec.name] = new_workers
        self.records[rec.name] = new
        self.splitters[rec.name] = TrafficSplitter(new.config.routes if new.config else [])
        self.recovering.discard(rec.name)
        log.info(
            "endpoint %s: config version %d is READY",
            rec.name,
            new.config.config_version if new.config else 0,
        )

    def ready(self, rec: st.EndpointRecord) -> bool:
        if rec.config is None:
            return False
        workers = self.active.get(rec.name, {})
        return all(
            workers.get(e.name) is not None and workers[e.name].state == "READY"
            for e in rec.config.served_entities
        )

    # ---- rendering (ServingEndpointDetailed / ServingEndpoint)

    def _entity_state(
        self, rec: st.EndpointRecord, entity: st.ServedEntity, worker: Worker | None, active: bool
    ) -> dict[str, str]:
        if entity.failed_message is not None:
            return {
                "deployment": "DEPLOYMENT_FAILED",
                "deployment_state_message": entity.failed_message,
            }
        if worker is None:
            return {
                "deployment": "DEPLOYMENT_ABORTED",
                "deployment_state_message": "The served entity is not deployed.",
            }
        state = worker.state
        if state == "READY":
            return {"deployment": "DEPLOYMENT_READY", "deployment_state_message": ""}
        if state == "LOADING":
            if active and rec.name in self.recovering:
                return {
                    "deployment": "DEPLOYMENT_RECOVERING",
                    "deployment_state_message": RECOVERING_MESSAGE,
                }
            return {
                "deployment": "DEPLOYMENT_CREATING",
                "deployment_state_message": CREATING_MESSAGE,
            }
        if state == "FAILED":
            return {
                "deployment": "DEPLOYMENT_FAILED",
                "deployment_state_message": worker.error or "The worker failed.",
            }
        return {
            "deployment": "DEPLOYMENT_ABORTED",
            "deployment_state_message": "The worker was stopped.",
        }

    def _render_config(
        self, rec: st.EndpointRecord, cfg: st.EndpointConfig, active: bool
    ) -> dict[str, Any]:
        workers = (self.active if active else self.pending).get(rec.name, {})
        entities, models = [], []
        for e in cfg.served_entities:
            d: dict[str, Any] = {
                "name": e.name,
                "entity_name": e.entity_name,
                "entity_version": e.entity_version,
                "scale_to_zero_enabled": e.scale_to_zero_enabled,
                "workload_type": e.workload_type or "CPU",
                "state": self._entity_state(rec, e, workers.get(e.name), active),
                "creator": e.creator,
                "creation_timestamp": e.creation_timestamp,
            }
            if e.max_provisioned_throughput is not None:
                d["min_provisioned_throughput"] = e.min_provisioned_throughput
                d["max_provisioned_throughput"] = e.max_provisioned_throughput
            if e.workload_size is not None:
                d["workload_size"] = e.workload_size
            if e.environment_vars:
                d["environment_vars"] = dict(e.environment_vars)
            entities.append(d)
            model = {k: v for k, v in d.items() if k not in ("entity_name", "entity_version")}
            models.append({**model, "model_name": e.entity_name, "model_version": e.entity_version})
        out: dict[str, Any] = {
            "served_entities": entities,
            "served_models": models,
            "traffic_config": {
                "routes": [
                    {
                        "served_model_name": r.served_entity_name,
                        "served_entity_name": r.served_entity_name,
                        "traffic_percentage": r.traffic_percentage,
                    }
                    for r in cfg.routes
                ]
            },
            "config_version": cfg.config_version,
        }
        if not active:
            out["start_time"] = cfg.start_time
        return out

    def _state(self, rec: st.EndpointRecord) -> dict[str, str]:
        return {
            "ready": "READY" if self.ready(rec) else "NOT_READY",
            "config_update": rec.config_update,
        }

    def render(self, rec: st.EndpointRecord) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": rec.name,
            "id": rec.id,
            "creator": rec.creator,
            "creation_timestamp": rec.creation_timestamp,
            "last_updated_timestamp": rec.last_updated_timestamp,
            "state": self._state(rec),
            "permission_level": "CAN_MANAGE",
            "route_optimized": rec.route_optimized,
        }
        if rec.config is not None:
            out["config"] = self._render_config(rec, rec.config, active=True)
        if rec.pending_config is not None:
            out["pending_config"] = self._render_config(rec, rec.pending_config, active=False)
        if rec.task:
            out["task"] = rec.task
        if rec.tags:
            out["tags"] = list(rec.tags)
        if rec.ai_gateway:
            out["ai_gateway"] = dict(rec.ai_gateway)
        if rec.description:
            out["description"] = rec.description
        return out

    def render_summary(self, rec: st.EndpointRecord) -> dict[str, Any]:
        cfg = rec.config or rec.pending_config
        out = {
            k: v
            for k, v in self.render(rec).items()
            if k not in ("config", "pending_config", "permission_level", "route_optimized")
        }
        if cfg is not None:
            out["config"] = {
                "served_entities": [
                    {
                        "name": e.name,
                        "entity_name": e.entity_name,
                        "entity_version": e.entity_version,
                    }
                    for e in cfg.served_entities
                ],
                "served_models": [
                    {"name": e.name, "model_name": e.entity_name, "model_version": e.entity_version}
                    for e in cfg.served_entities
                ],
            }
        return out

    # ---- invocations

    def task_of(self, name: str) -> str:
        """The task an endpoint serves (404 if it does not exist)."""
        with self.lock:
            return self._record(name).task or TASK_COMPLETIONS

    def pick(self, name: str) -> tuple[str, Worker]:
        """The served entity (by traffic split) that answers the next request."""
        with self.lock:
            rec = self._record(name)
            if rec.config is None:
                raise ApiError(
                    503,
                    "TEMPORARILY_UNAVAILABLE",
                    f"Endpoint '{name}' is not ready: state.ready is NOT_READY and config_update "
                    f"is {rec.config_update}; wait until state.ready is READY before querying it.",
                )
            workers = self.active.get(name, {})
            ready = {n for n, w in workers.items() if w.state == "READY"}
            splitter = self.splitters.setdefault(name, TrafficSplitter(rec.config.routes))
            chosen = splitter.next(ready)
            if chosen is None:
                states = ", ".join(f"{n}: {w.state}" for n, w in workers.items()) or "no worker"
                raise ApiError(
                    503,
                    "TEMPORARILY_UNAVAILABLE",
                    f"Endpoint '{name}' has no served entity ready to answer ({states}); wait "
                    "until state.ready is READY.",
                )
            self._check_rate_limit(rec)
            return chosen, workers[chosen]

    def _check_rate_limit(self, rec: st.EndpointRecord) -> None:
        limits = [
            r["calls"]
            for r in (rec.ai_gateway or {}).get("rate_limits", [])
            if r.get("calls") is not None
        ]
        limits += [r["calls"] for r in rec.rate_limits or [] if r.get("calls") is not None]
        if not limits:
            return
        limit = min(limits)
        now = self.clock()
        window = self.calls.setdefault(rec.name, deque())
        while window and window[0] <= now - 60.0:
            window.popleft()
        if len(window) >= limit:
            raise ApiError(
                429,
                "REQUEST_LIMIT_EXCEEDED",
                f"Exceeded the rate limit of endpoint '{rec.name}': {limit} calls per minute "
                "(ai_gateway.rate_limits).",
            )
        window.append(now)


def _failed(worker: Worker | None) -> bool:
    return worker is None or worker.state in ("FAILED", "STOPPED")


def _stop_all(workers: Iterable[Worker]) -> None:
    for w in workers:
        try:
            w.stop()
        except Exception:  # a worker that cannot stop cleanly must not block the others
            log.exception("stopping a worker failed")


# ---------------------------------------------------------------- invocations


def _rows(records: Any, field: str) -> list[dict[str, Any]]:
    if (
        not isinstance(records, list)
        or not records
        or not all(isinstance(r, dict) for r in records)
    ):
        raise invalid(f"{field} is not valid: expected a non-empty list of objects (one per row).")
    return records


def unwrap_request(body: dict[str, Any], task: str) -> dict[str, Any]:
    """Accept MLflow's serving wrappers around a task's request.

    ``{"inputs": {...}, "params": {...}}`` and ``dataframe_records`` / ``dataframe_split``
    / ``instances`` (one row a prompt or input) become the plain request the worker takes.
    """
    params = body.get("params") or {}
    if not isinstance(params, dict):
        raise invalid(f"params={params!r} is not valid: expected an object.")
    if isinstance(body.get("inputs"), dict):
        return {**body["inputs"], **params}
    rows: list[dict[str, Any]] | None = None
    if "dataframe_records" in body:
        rows = _rows(body["dataframe_records"], "dataframe_records")
    elif "instances" in body:
        rows = _rows(body["instances"], "instances")
    elif "dataframe_split" in body:
        split = body["dataframe_split"]
        if (
            not isinstance(split, dict)
            or not isinstance(split.get("columns"), list)
            or not isinstance(split.get("data"), list)
        ):
            raise invalid(
                "dataframe_split is not valid: expected {'columns': [...], 'data': [[...], ...]}."
            )
        rows = _rows(
            [dict(zip(split["columns"], row, strict=False)) for row in split["data"]],
            "dataframe_split",
        )
    if rows is None:
        return body
    if len(rows) == 1:
        return {**rows[0], **params}
    key = TASK_FIELD[task]
    if task == TASK_CHAT:
        raise invalid(f"a {TASK_CHAT} request takes one conversation; got {len(rows)} rows.")
    rest = [{k: v for k, v in r.items() if k != key} for r in rows]
    if any(r != rest[0] for r in rest):
        raise invalid(
            f"rows differ in fields other than '{key}'; send one request per set of parameters."
        )
    values = [r.get(key) for r in rows]
    return {**rest[0], key: values, **params}


def check_request_task(body: dict[str, Any], task: str, endpoint: str) -> None:
    """A request for another task than the endpoint's is a 400 naming both."""
    own = TASK_FIELD[task]
    if own in body:
        return
    for other, field in TASK_FIELD.items():
        if other != task and field in body:
            raise invalid(
                f"Endpoint '{endpoint}' serves {task} requests (field '{own}'), but this request "
                f"has '{field}', the field of a {other} request."
            )


# ------------------------------------------------------------------------ app


async def _json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object, whatever the Content-Type says (the Databricks docs
    send ``Context-Type: text/json``)."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except UnicodeDecodeError as exc:
        raise ApiError(
            400, "MALFORMED_REQUEST", f"Malformed request: the body is not UTF-8 ({exc.reason})."
        ) from exc
    except json.JSONDecodeError as exc:
        raise ApiError(
            400,
            "MALFORMED_REQUEST",
            f"Malformed request: invalid JSON in the body ({exc.msg} at line {exc.lineno}, column {exc.colno}).",
        ) from exc
    if not isinstance(data, dict):
        raise ApiError(
            400,
            "MALFORMED_REQUEST",
            f"Malformed request: the body must be a JSON object, got {type(data).__name__}.",
        )
    return data


def create_app(
    *,
    token: str,
    store: st.EndpointStore,
    catalog: Catalog,
    worker_factory: WorkerFactory,
    poll_interval: float = 0.2,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    """The ASGI app. Collaborators are injected so tests can drive states directly."""
    if not token:
        raise ValueError("the local workspace needs a token")
    expected = token.encode()
    manager = EndpointManager(store, catalog, worker_factory, clock=clock)

    async def reconcile_loop() -> None:
        while True:
            try:
                to_stop = manager.reconcile()
                if to_stop:
                    await asyncio.to_thread(_stop_all, to_stop)
            except Exception:
                log.exception("reconciling endpoint states failed")
            await asyncio.sleep(poll_interval)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await run_in_threadpool(manager.resume)
        task = asyncio.create_task(reconcile_loop())
        try:
            yield
        finally:
            task.cancel()
            await run_in_threadpool(manager.shutdown)

    app = FastAPI(
        title="ptdeploy local workspace",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.manager = manager

    app.add_middleware(BearerAuth, token=expected)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code in (404, 405):
            return ApiError(
                404, "ENDPOINT_NOT_FOUND", f"No API found for '{request.method} {request.url.path}'"
            ).response()
        return ApiError(exc.status_code, "BAD_REQUEST", str(exc.detail)).response()

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return ApiError(
            500, "INTERNAL_ERROR", f"Internal error of the local workspace: {exc}"
        ).response()

    base = "/api/2.0/serving-endpoints"

    @app.get(f"{base}/get-model-optimization-info/{{model:path}}")
    async def optimization_info(model: str) -> JSONResponse:
        name, _, version = model.rpartition("/")
        if not name or not version:
            raise invalid(
                f"'{model}' is not '<registered model name>/<version>', e.g. "
                "main.default.my_model/1."
            )
        try:
            desc = await run_in_threadpool(catalog.describe, name, version)
        except ModelVersionNotFound as exc:
            raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", str(exc)) from exc
        return JSONResponse(desc.response())

    @app.post(base)
    async def create(request: Request) -> JSONResponse:
        body = await _json_object(request)
        return JSONResponse(await run_in_threadpool(manager.create, body))

    @app.get(base)
    async def list_endpoints() -> JSONResponse:
        return JSONResponse(await run_in_threadpool(manager.list))

    @app.get(f"{base}/{{name}}")
    async def get(name: str) -> JSONResponse:
        return JSONResponse(await run_in_threadpool(manager.get, name))

    @app.delete(f"{base}/{{name}}")
    async def delete(name: str) -> JSONResponse:
        return JSONResponse(await run_in_threadpool(manager.delete, name))

    @app.put(f"{base}/{{name}}/config")
    async def update_config(name: str, request: Request) -> JSONResponse:
        body = await _json_object(request)
        return JSONResponse(await run_in_threadpool(manager.update_config, name, body))

    @app.put(f"{base}/{{name}}/ai-gateway")
    async def ai_gateway(name: str, request: Request) -> JSONResponse:
        body = await _json_object(request)
        return JSONResponse(await run_in_threadpool(manager.put_ai_gateway, name, body))

    @app.patch(f"{base}/{{name}}/tags")
    async def tags(name: str, request: Request) -> JSONResponse:
        body = await _json_object(request)
        return JSONResponse(await run_in_threadpool(manager.patch_tags, name, body))

    @app.put(f"{base}/{{name}}/rate-limits")
    async def rate_limits(name: str, request: Request) -> JSONResponse:
        body = await _json_object(request)
        return JSONResponse(await run_in_threadpool(manager.put_rate_limits, name, body))

    async def invoke(name: str, body: dict[str, Any], route_task: str | None) -> JSONResponse:
        task = manager.task_of(name)
        if route_task is not None and route_task != task:
            raise invalid(
                f"Endpoint '{name}' serves {task} requests; this route takes {route_task} "
                f"requests. Use {OPENAI_ROUTE[task]} (or /serving-endpoints/{name}/invocations)."
            )
        request_body = unwrap_request(body, task)
        check_request_task(request_body, task, name)
        if request_body.get("stream"):
            raise invalid("stream=true is not supported by the local workspace; send stream=false.")
        request_body.pop("stream", None)
        served, worker = manager.pick(name)
        invalid_request = _invalid_request_error()
        try:
            result = await worker.infer(request_body)
        except Exception as exc:
            if invalid_request is not None and isinstance(exc, invalid_request):
                code = getattr(exc, "error_code", None) or "INVALID_PARAMETER_VALUE"
                raise ApiError(400, code, str(exc)) from exc
            if worker.state != "READY":
                raise ApiError(
                    503,
                    "TEMPORARILY_UNAVAILABLE",
                    f"Served entity '{served}' of endpoint '{name}' is {worker.state}: {worker.error or exc}",
                ) from exc
            log.exception("inference failed on %s/%s", name, served)
            raise ApiError(
                500, "INTERNAL_ERROR", f"Inference failed in served entity '{served}': {exc}"
            ) from exc
        if isinstance(result, dict) and route_task is not None:
            result["model"] = name  # OpenAI routes answer with the endpoint name
        return JSONResponse(result, headers={"served-model-name": served})

    OPENAI_ROUTE = {
        TASK_CHAT: "/serving-endpoints/chat/completions",
        TASK_COMPLETIONS: "/serving-endpoints/completions",
        TASK_EMBEDDINGS: "/serving-endpoints/embeddings",
    }

    @app.post("/serving-endpoints/{name}/invocations")
    async def invocations(name: str, request: Request) -> JSONResponse:
        body = await _json_object(request)
        return await invoke(name, body, None)

    def openai_route(task: str):
        async def handler(request: Request) -> JSONResponse:
            body = await _json_object(request)
            model = body.pop("model", None)
            if not isinstance(model, str) or not model:
                raise invalid("model is required: the name of the serving endpoint to query.")
            return await invoke(model, body, task)

        return handler

    for task, path in OPENAI_ROUTE.items():
        app.add_api_route(path, openai_route(task), methods=["POST"])

    return app


# ----------------------------------------------------------------------- main


def listening_socket(port: int) -> socket.socket:
    """A TCP socket listening on the loopback interface only.

    IPPROTO_TCP explicitly: accepted sockets inherit it, and only then does asyncio set
    TCP_NODELAY on them. Without it, a keep-alive client (urllib3, so the SDK) waits
    ~40 ms a request: the body write waits for the delayed ACK (Nagle).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((LOOPBACK, port))
    except OSError as exc:
        sock.close()
        raise SystemExit(
            f"cannot listen on {LOOPBACK}:{port}: {exc.strerror}; choose another --port"
        ) from exc
    sock.listen(128)
    return sock


def run_server(
    port: int = 0, *, on_listening: Callable[[int], None] | None = None, detached: bool = False
) -> None:
    """Serve on 127.0.0.1:``port`` (0: any free port) until SIGINT/SIGTERM.

    Binds loopback only: the API has a bearer token, but the workspace is for one user on
    one machine and never needs to be reachable from elsewhere.
    """
    import uvicorn

    from ptdeploy import state
    from ptdeploy.workspace import control
    from ptdeploy.workspace.optimization_info import RegistryCatalog

    token = control.read_token(create=True)
    sock = listening_socket(port)
    bound = sock.getsockname()[1]
    tracking_uri = state.tracking_uri()
    app = create_app(
        token=token,
        store=st.EndpointStore(state.workspace_dir() / "endpoints"),
        catalog=RegistryCatalog(tracking_uri),
        worker_factory=entity_worker_factory(tracking_uri),
    )
    config = uvicorn.Config(app, log_level="info", lifespan="on", timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    control.write_server_info(pid=os.getpid(), port=bound, detached=detached)
    log.info(
        "local workspace listening on http://%s:%d (state: %s)", LOOPBACK, bound, state.state_dir()
    )
    if on_listening is not None:
        on_listening(bound)
    try:
        server.run(sockets=[sock])
    finally:
        control.clear_server_info(os.getpid())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ptdeploy.workspace.server", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--port", type=int, default=0, help="port on 127.0.0.1 (default: any free port)"
    )
    parser.add_argument("--detached", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    run_server(args.port, detached=args.detached)
    return 0


if __name__ == "__main__":
    sys.exit(main())
