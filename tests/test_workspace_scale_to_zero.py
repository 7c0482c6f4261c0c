"""Scale to zero in the local workspace: an idle scale-to-zero entity's worker is unloaded,
the endpoint stays READY, and the next request loads it again, waits, and is answered
(through databricks-sdk, against the real app in-process; the idle period on a fake clock)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from databricks.sdk import WorkspaceClient
from fakes import TOKEN, Catalog, ReadyWorker
from ptdeploy import limits
from ptdeploy.serving.endpoints import EndpointSpec, create_or_update
from ptdeploy.serving.throughput import ThroughputPlan
from ptdeploy.workspace import store as st
from ptdeploy.workspace.app import create_app


class SlowLoading(ReadyWorker):
    """Loads for a moment (a model load) after the first start, then serves."""

    started: list[SlowLoading] = []

    def start(self) -> None:
        SlowLoading.started.append(self)
        if len(SlowLoading.started) == 1:
            self.state = "READY"
            return
        self.state = "LOADING"
        threading.Timer(0.3, lambda: setattr(self, "state", "READY")).start()

    async def infer(self, body: dict[str, Any]) -> dict[str, Any]:
        assert self.state == "READY", "answered by a loaded worker only"
        return {"choices": [{"index": 0, "text": "ok", "finish_reason": "stop"}]}


def _until(condition, what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def clock():
    return [1_700_000_000.0]


@pytest.fixture
def w(serve_app, tmp_path, clock, monkeypatch) -> WorkspaceClient:
    monkeypatch.setenv(limits.SCALE_TO_ZERO_IDLE_ENV, "60")
    SlowLoading.started = []
    app = create_app(
        token=TOKEN,
        store=st.EndpointStore(tmp_path / "endpoints"),
        catalog=Catalog(),
        worker_factory=SlowLoading,
        poll_interval=0.02,
        clock=lambda: clock[0],
    )
    return WorkspaceClient(host=serve_app(app), token=TOKEN, auth_type="pat")


def _ask(w: WorkspaceClient, name: str) -> dict[str, Any]:
    return w.api_client.do("POST", f"/serving-endpoints/{name}/invocations", body={"prompt": "x"})


def _entity_state(w: WorkspaceClient, name: str) -> tuple[str, str, str]:
    ep = w.serving_endpoints.get(name)
    se = ep.config.served_entities[0].state
    return ep.state.ready.value, se.deployment.value, se.deployment_state_message or ""


def test_an_idle_endpoint_scales_to_zero_and_the_next_request_loads_it_again(w, clock):
    plan = ThroughputPlan(0, 20, 20, scale_to_zero_enabled=True)
    create_or_update(w, EndpointSpec("stz", "main.default.m", "1", plan), progress=False)
    assert _ask(w, "stz")["choices"][0]["text"] == "ok"
    first = SlowLoading.started[0]

    clock[0] += 59  # not idle long enough
    time.sleep(0.1)
    assert first.state == "READY"

    clock[0] += 2
    _until(lambda: first.state == "STOPPED", "the idle worker to be unloaded")
    ready, deployment, message = _entity_state(w, "stz")
    assert (ready, deployment) == ("READY", "DEPLOYMENT_READY"), "still READY, as on Databricks"
    assert "Scaled to zero" in message

    assert _ask(w, "stz")["choices"][0]["text"] == "ok", "the request waited for the load"
    assert len(SlowLoading.started) == 2 and SlowLoading.started[1].state == "READY"
    assert _entity_state(w, "stz")[2] == ""


def test_an_endpoint_without_scale_to_zero_keeps_its_worker(w, clock):
    plan = ThroughputPlan(20, 20, 20)
    create_or_update(w, EndpointSpec("warm", "main.default.m", "1", plan), progress=False)
    _ask(w, "warm")
    clock[0] += 3600
    time.sleep(0.2)
    assert SlowLoading.started[0].state == "READY" and len(SlowLoading.started) == 1


def test_a_request_in_flight_keeps_its_worker_loaded(serve_app, tmp_path, clock, monkeypatch):
    import asyncio

    monkeypatch.setenv(limits.SCALE_TO_ZERO_IDLE_ENV, "60")
    release = threading.Event()

    class Long(ReadyWorker):
        async def infer(self, body: dict[str, Any]) -> dict[str, Any]:
            while not release.is_set():
                await asyncio.sleep(0.01)
            return {"choices": [{"index": 0, "text": "done", "finish_reason": "stop"}]}

    workers: list[Long] = []

    def factory(entity: st.ServedEntity) -> Long:
        workers.append(Long(entity))
        return workers[-1]

    app = create_app(
        token=TOKEN,
        store=st.EndpointStore(tmp_path / "endpoints"),
        catalog=Catalog(),
        worker_factory=factory,
        poll_interval=0.02,
        clock=lambda: clock[0],
    )
    w = WorkspaceClient(host=serve_app(app), token=TOKEN, auth_type="pat")
    plan = ThroughputPlan(0, 20, 20, scale_to_zero_enabled=True)
    create_or_update(w, EndpointSpec("long", "main.default.m", "1", plan), progress=False)
    answers: list[dict[str, Any]] = []
    asker = threading.Thread(target=lambda: answers.append(_ask(w, "long")))
    asker.start()
    time.sleep(0.2)
    clock[0] += 3600  # idle for an hour by the clock, but a request is in flight
    time.sleep(0.2)
    assert workers[0].state == "READY"
    release.set()
    asker.join(10)
    assert answers[0]["choices"][0]["text"] == "done"
    time.sleep(0.2)
    assert workers[0].state == "READY", "the idle period counts from the answer"
    clock[0] += 61
    _until(lambda: workers[0].state == "STOPPED", "the unload once idle after the answer")
