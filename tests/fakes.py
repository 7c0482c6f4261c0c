"""One set of fakes for client tests that drive the local workspace's real app in-process.

The app (routes, validation, state machine, rendering) is the real one; only what would
load a model is replaced: a worker that is ready at once and a catalog that describes
Llama-architecture models without a registry. ``local_client`` (a fixture in conftest.py)
serves the app on a loopback port and returns a ``WorkspaceClient`` for it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ptdeploy.errors import ModelVersionNotFoundError
from ptdeploy.workspace import store as st
from ptdeploy.workspace.optimization_info import ModelDescription

TOKEN = "in-process-token"
CHUNK = 20


class ReadyWorker:
    """A served entity's worker that is READY as soon as it starts; answers ``ok``.

    Subclass it to answer (``infer``) or stream (``stream``) the way a test needs.
    """

    def __init__(self, entity: st.ServedEntity) -> None:
        self.task, self.error, self.state = entity.task, None, "STOPPED"

    def start(self) -> None:
        self.state = "READY"

    def stop(self) -> None:
        self.state = "STOPPED"

    async def infer(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"choices": [{"text": "ok"}]}


class LoadingWorker(ReadyWorker):
    """A worker that loads until the test decides: ``load()`` makes it READY, ``fail(error)``
    FAILED (a model that did not load, or a worker process that died), with that error."""

    polls_left: int | None = None  # set by ``Workers``: GETs until it loads by itself

    def start(self) -> None:
        self.state = "LOADING"

    def load(self) -> None:
        self.state = "READY"

    def fail(self, error: str) -> None:
        self.state, self.error = "FAILED", error


class Workers:
    """A worker factory that keeps every worker it made (``made``), so a test moves their
    states. Each ``LoadingWorker`` loads after ``polls_to_ready`` calls of ``poll`` (None:
    never; read when the worker is made): a test calls ``poll`` at each GET of an endpoint
    (``RequestLog``'s hook), which gives exact poll counts."""

    def __init__(self, kind: type[ReadyWorker] = LoadingWorker, polls_to_ready: int | None = 2):
        self.kind, self.polls_to_ready = kind, polls_to_ready
        self.made: list[ReadyWorker] = []

    def __call__(self, entity: st.ServedEntity) -> ReadyWorker:
        worker = self.kind(entity)
        worker.polls_left = self.polls_to_ready
        self.made.append(worker)
        return worker

    def loading(self) -> list[LoadingWorker]:
        return [w for w in self.made if isinstance(w, LoadingWorker) and w.state == "LOADING"]

    def poll(self, fail_with: str | None = None) -> None:
        """One GET: a loading worker whose count is done loads (or fails with ``fail_with``),
        the others count down."""
        for worker in self.loading():
            if worker.polls_left is None:
                continue
            if worker.polls_left > 0:
                worker.polls_left -= 1
            elif fail_with is not None:
                worker.fail(fail_with)
            else:
                worker.load()


class Catalog:
    """Describes any model (or only ``models``) as an optimizable Llama whose task
    ``task_of(name)`` gives, with a throughput chunk of ``chunk`` tokens/s (Databricks
    answers 980 for Llama 3 8B); a model named in ``model_units`` is provisioned in model
    units instead, with that ``model_unit_chunk_size`` (as GPT OSS on Databricks)."""

    def __init__(
        self,
        task_of: Callable[[str], str] = lambda name: "llm/v1/completions",
        models: set[tuple[str, str]] | None = None,
        chunk: int = CHUNK,
        model_units: dict[str, int] | None = None,
    ) -> None:
        self.task_of, self.models, self.chunk = task_of, models, chunk
        self.model_units = model_units or {}

    def describe(self, name: str, version: str) -> ModelDescription:
        if self.models is not None and (name, version) not in self.models:
            raise ModelVersionNotFoundError(f"{name} version {version} is not registered")
        return ModelDescription(
            name=name,
            version=version,
            task=self.task_of(name),
            architecture="LlamaForCausalLM",
            optimizable=True,
            model_type="llama",
            throughput_chunk_size=None if name in self.model_units else self.chunk,
            model_unit_chunk_size=self.model_units.get(name),
            reason="",
        )


def create_endpoints(w: Any, entities: dict[str, str], version: str = "1") -> None:
    """Create one endpoint per ``{endpoint name: registered model name}`` through the
    SDK's API client, as a user's code would, and return once they are READY."""
    for name, entity_name in entities.items():
        entity = {"entity_name": entity_name, "entity_version": version}
        entity |= {"min_provisioned_throughput": 0, "max_provisioned_throughput": CHUNK}
        body = {"name": name, "config": {"served_entities": [entity]}}
        w.api_client.do("POST", "/api/2.0/serving-endpoints", body=body)
    # Wait the few poll rounds until they are READY, so no query meets a 503 that the
    # SDK would retry after a back-off of a second or more.
    import time

    for _ in range(1000):
        states = [w.api_client.do("GET", f"/api/2.0/serving-endpoints/{n}") for n in entities]
        if all(st["state"]["ready"] == "READY" for st in states):
            return
        time.sleep(0.01)
    raise AssertionError(f"endpoints not READY: {states}")


class RecordingWorker(ReadyWorker):
    """A worker that records each request body in ``bodies`` (shared by the workers of
    one test) and answers with ``answer(task, body)``."""

    bodies: list[tuple[str, dict[str, Any]]]
    answer: Callable[[str, dict[str, Any]], dict[str, Any]]

    def __init__(self, entity: st.ServedEntity) -> None:
        super().__init__(entity)
        self.endpoint = entity.entity_name.rsplit(".", 1)[-1]

    async def infer(self, body: dict[str, Any]) -> dict[str, Any]:
        self.bodies.append((self.endpoint, body))
        return type(self).answer(self.task, body)


def recording_worker(
    answer: Callable[[str, dict[str, Any]], dict[str, Any]],
) -> type[RecordingWorker]:
    """A ``RecordingWorker`` class answering with ``answer``, with its own ``bodies`` list."""
    return type("Recording", (RecordingWorker,), {"bodies": [], "answer": staticmethod(answer)})


class FakeClock:
    """The one fake ``ptdeploy.clock.Clock`` (databricks-sdk's interface): ``sleep``
    advances ``time`` at once and is recorded in ``sleeps``; ``advance`` moves it as a
    request that took that long would. Thread-safe (load-test workers share it)."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        import threading

        self.now = float(start)
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def time(self) -> float:
        with self._lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.now += seconds

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


@dataclass
class Call:
    """One HTTP request the app received: its JSON body (None when empty) and the status
    it was answered with."""

    method: str
    path: str
    body: Any
    status: int | None = None


class RequestLog:
    """Wraps the app (ASGI) and records each HTTP request it receives: ``requests`` as
    ``(method, path, authorization header)`` (what reached the workspace, retries
    included), ``calls`` with their JSON bodies and answer statuses.

    ``before(call)``, when given, runs (in a worker thread) before the app handles each
    recorded request: a test moves its fake workers' states there, or sends a request of
    its own (a concurrent client). Requests sent while ``before`` runs, or inside
    ``quiet()``, are neither recorded nor hooked: the log holds what the client under
    test sent.
    """

    def __init__(self, app: Any, before: Callable[[Call], None] | None = None) -> None:
        self.app, self.before = app, before
        self.requests: list[tuple[str, str, str]] = []
        self.calls: list[Call] = []
        self._quiet = 0

    @contextmanager
    def quiet(self) -> Iterator[None]:
        self._quiet += 1
        try:
            yield
        finally:
            self._quiet -= 1

    def count(self, method: str, suffix: str = "", status: int | None = None) -> int:
        return sum(
            1
            for c in self.calls
            if c.method == method
            and c.path.endswith(suffix)
            and (status is None or c.status == status)
        )

    def bodies(self, method: str, suffix: str = "") -> list[Any]:
        return [c.body for c in self.calls if c.method == method and c.path.endswith(suffix)]

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self._quiet:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        auth = headers.get(b"authorization", b"").decode()
        self.requests.append((scope["method"], scope["path"], auth))
        messages = [await receive()]
        while messages[-1].get("type") == "http.request" and messages[-1].get("more_body"):
            messages.append(await receive())
        raw = b"".join(m.get("body", b"") for m in messages)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        call = Call(scope["method"], scope["path"], body)
        self.calls.append(call)
        if self.before is not None:
            from starlette.concurrency import run_in_threadpool

            with self.quiet():
                await run_in_threadpool(self.before, call)

        async def replay() -> dict:
            return messages.pop(0) if messages else await receive()

        async def answer(message: dict) -> None:
            if message["type"] == "http.response.start":
                call.status = message["status"]
            await send(message)

        await self.app(scope, replay, answer)


# The template parameters of the AI Gateway, tags and canary, all off: what a parameters
# cell that predates them means (specs.GATEWAY).
GATEWAY_OFF: dict[str, Any] = {
    "usage_tracking": False,
    "inference_table_catalog": "",
    "inference_table_schema": "",
    "inference_table_prefix": "",
    "rate_limit_calls_per_minute": "",
    "tags": "",
    "canary_percent": 0,
}
