"""One set of fakes for client tests that drive the local workspace's real app in-process.

The app (routes, validation, state machine, rendering) is the real one; only what would
load a model is replaced: a worker that is ready at once and a catalog that describes
Llama-architecture models without a registry. ``local_client`` (a fixture in conftest.py)
serves the app on a loopback port and returns a ``WorkspaceClient`` for it.
"""

from __future__ import annotations

from collections.abc import Callable
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


class Catalog:
    """Describes any model (or only ``models``) as an optimizable Llama whose task
    ``task_of(name)`` gives, with a chunk of ``CHUNK`` tokens/s."""

    def __init__(
        self,
        task_of: Callable[[str], str] = lambda name: "llm/v1/completions",
        models: set[tuple[str, str]] | None = None,
    ) -> None:
        self.task_of, self.models = task_of, models

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
            throughput_chunk_size=CHUNK,
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


class RequestLog:
    """Wraps the app (ASGI) and records each HTTP request it receives as
    ``(method, path, authorization header)``: what reached the workspace, retries included."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.requests: list[tuple[str, str, str]] = []

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope.get("headers") or [])
            auth = headers.get(b"authorization", b"").decode()
            self.requests.append((scope["method"], scope["path"], auth))
        await self.app(scope, receive, send)


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
