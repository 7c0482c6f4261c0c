"""The local workspace's ASGI app: a thin route table over the endpoint manager.

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
    POST   /serving-endpoints/{name}/invocations          query (stream=true: SSE)
    POST   /serving-endpoints/chat/completions            OpenAI-style, model = endpoint
    POST   /serving-endpoints/completions
    POST   /serving-endpoints/embeddings

Each route reads its body (``protocol``), hands it to the manager (``manager``, which
validates with ``validation`` and answers through ``render``) in a thread pool, and
returns the answer. A background loop advances endpoint states and heals workers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from ptdeploy.errors import ModelVersionNotFoundError, WorkspaceApiError
from ptdeploy.limits import MAX_FOUNDATION_MODEL_PAYLOAD_BYTES
from ptdeploy.workspace import store as st
from ptdeploy.workspace import streaming
from ptdeploy.workspace.manager import (
    EndpointManager,
    HealingPolicy,
    Worker,
    WorkerFactory,
    stop_all,
)
from ptdeploy.workspace.protocol import (
    BearerAuth,
    install_error_handlers,
    invalid,
    json_object,
    unavailable,
)
from ptdeploy.workspace.schemas import (
    TASK_CHAT,
    TASK_COMPLETIONS,
    TASK_EMBEDDINGS,
    InvalidRequestError,
)
from ptdeploy.workspace.validation import (
    Catalog,
    check_model_version_path,
    check_request_task,
    unwrap_request,
)

log = logging.getLogger("ptdeploy.workspace.server")

BASE = "/api/2.0/serving-endpoints"
OPENAI_ROUTE = {
    TASK_CHAT: "/serving-endpoints/chat/completions",
    TASK_COMPLETIONS: "/serving-endpoints/completions",
    TASK_EMBEDDINGS: "/serving-endpoints/embeddings",
}
BATCHING_ENV = "PTDEPLOY_BATCHING"


def batching_enabled() -> bool:
    """Whether new workers batch concurrent requests: ``$PTDEPLOY_BATCHING`` (default on).

    ``PTDEPLOY_BATCHING=0`` (or ``false``/``off``/``no``) in the environment that starts
    the server makes every worker serve one request at a time: the baseline the serving
    benchmarks compare batching against. Read when a worker is created, in the server
    process.
    """
    return os.environ.get(BATCHING_ENV, "1").strip().lower() not in ("0", "false", "off", "no")


def entity_worker_factory(tracking_uri: str, spares: int | None = None) -> WorkerFactory:
    """Real workers: one ``EntityWorker`` process per served entity.

    ``spares`` worker processes (default ``$PTDEPLOY_SPARE_WORKERS``, 1) are kept with
    their imports done, so a new or restarted worker only loads its model.
    """
    from ptdeploy.workspace.worker import EntityWorker, SparePool, spare_workers_wanted

    pool = SparePool(spare_workers_wanted() if spares is None else spares)

    def make(entity: st.ServedEntity) -> Worker:
        return EntityWorker(
            entity.name,
            entity.entity_name,
            entity.entity_version,
            tracking_uri=tracking_uri,
            batching=batching_enabled(),
            spares=pool,
        )

    make.spares = pool  # type: ignore[attr-defined]
    return make


async def invoke(
    manager: EndpointManager, name: str, body: dict[str, Any], route_task: str | None
) -> JSONResponse:
    """Validate a query, route it to a served entity by traffic split, and answer."""
    task = manager.task_of(name)
    if route_task is not None and route_task != task:
        raise invalid(
            f"Endpoint '{name}' serves {task} requests; this route takes {route_task} "
            f"requests. Use {OPENAI_ROUTE[task]} (or /serving-endpoints/{name}/invocations)."
        )
    request_body = unwrap_request(body, task)
    check_request_task(request_body, task, name)
    served, worker = manager.pick(name)
    model = name if route_task is not None else served
    try:
        if request_body.get("stream"):
            return await _stream(worker, request_body, task, model, served)
        result = await worker.infer(request_body)
    except InvalidRequestError as exc:
        raise WorkspaceApiError(400, exc.error_code, str(exc)) from exc
    except Exception as exc:
        if worker.state != "READY":  # died or stopped under the request: retriable
            raise unavailable(
                f"Served entity '{served}' of endpoint '{name}' is {worker.state}: "
                f"{worker.error or exc}; retry in a moment (the local workspace restarts "
                "dead workers)."
            ) from exc
        log.exception("inference failed on %s/%s", name, served)
        raise WorkspaceApiError(
            500, "INTERNAL_ERROR", f"Inference failed in served entity '{served}': {exc}"
        ) from exc
    if isinstance(result, dict) and route_task is not None:
        result["model"] = name  # OpenAI routes answer with the endpoint name
    return JSONResponse(result, headers={"served-model-name": served})


async def _stream(
    worker: Worker, body: dict[str, Any], task: str, model: str, served: str
) -> StreamingResponse:
    """Answer ``stream=true`` with server-sent events (``ptdeploy.workspace.streaming``).

    The first item is awaited here, before the response starts, so a request the worker
    refuses still gets its 400 (or 503) instead of a broken stream.
    """
    events = worker.stream(body)
    first = await anext(events)
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    return StreamingResponse(
        streaming.sse(events, task=task, model=model, include_usage=include_usage, first=first),
        media_type="text/event-stream",
        headers={"served-model-name": served, "Cache-Control": "no-cache"},
    )


def create_app(
    *,
    token: str,
    store: st.EndpointStore,
    catalog: Catalog,
    worker_factory: WorkerFactory,
    poll_interval: float = 0.2,
    clock: Callable[[], float] = time.time,
    healing: HealingPolicy | None = None,
) -> FastAPI:
    """The ASGI app. Collaborators are injected so tests can drive states directly."""
    if not token:
        raise ValueError("the local workspace needs a token")
    manager = EndpointManager(store, catalog, worker_factory, clock=clock, healing=healing)

    async def reconcile_loop() -> None:
        while True:
            try:
                to_stop = manager.reconcile()
                if to_stop:
                    await asyncio.to_thread(stop_all, to_stop)
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
    app.add_middleware(BearerAuth, token=token.encode())
    install_error_handlers(app)

    @app.get(f"{BASE}/get-model-optimization-info/{{model:path}}")
    async def optimization_info(model: str) -> JSONResponse:
        name, version = check_model_version_path(model)
        try:
            desc = await run_in_threadpool(catalog.describe, name, version)
        except ModelVersionNotFoundError as exc:
            raise WorkspaceApiError(404, "RESOURCE_DOES_NOT_EXIST", str(exc)) from exc
        return JSONResponse(desc.response())

    @app.post(BASE)
    async def create(request: Request) -> JSONResponse:
        body = await json_object(request)
        return JSONResponse(await run_in_threadpool(manager.create, body))

    @app.get(BASE)
    async def list_endpoints() -> JSONResponse:
        return JSONResponse(await run_in_threadpool(manager.list))

    @app.get(f"{BASE}/{{name}}")
    async def get(name: str) -> JSONResponse:
        return JSONResponse(await run_in_threadpool(manager.get, name))

    @app.delete(f"{BASE}/{{name}}")
    async def delete(name: str) -> JSONResponse:
        return JSONResponse(await run_in_threadpool(manager.delete, name))

    @app.put(f"{BASE}/{{name}}/config")
    async def update_config(name: str, request: Request) -> JSONResponse:
        body = await json_object(request)
        return JSONResponse(await run_in_threadpool(manager.update_config, name, body))

    @app.put(f"{BASE}/{{name}}/ai-gateway")
    async def ai_gateway(name: str, request: Request) -> JSONResponse:
        body = await json_object(request)
        return JSONResponse(await run_in_threadpool(manager.put_ai_gateway, name, body))

    @app.patch(f"{BASE}/{{name}}/tags")
    async def tags(name: str, request: Request) -> JSONResponse:
        body = await json_object(request)
        return JSONResponse(await run_in_threadpool(manager.patch_tags, name, body))

    @app.put(f"{BASE}/{{name}}/rate-limits")
    async def rate_limits(name: str, request: Request) -> JSONResponse:
        body = await json_object(request)
        return JSONResponse(await run_in_threadpool(manager.put_rate_limits, name, body))

    @app.post("/serving-endpoints/{name}/invocations")
    async def invocations(name: str, request: Request) -> JSONResponse:
        body = await json_object(request, MAX_FOUNDATION_MODEL_PAYLOAD_BYTES)
        return await invoke(manager, name, body, None)

    def openai_route(task: str):
        async def handler(request: Request) -> JSONResponse:
            body = await json_object(request, MAX_FOUNDATION_MODEL_PAYLOAD_BYTES)
            model = body.pop("model", None)
            if not isinstance(model, str) or not model:
                raise invalid("model is required: the name of the serving endpoint to query.")
            return await invoke(manager, model, body, task)

        return handler

    for task, path in OPENAI_ROUTE.items():
        app.add_api_route(path, openai_route(task), methods=["POST"])

    return app
