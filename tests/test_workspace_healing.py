"""Workers heal themselves: a dead worker is restarted with backoff, up to a cap.

The quick tests drive the manager with workers the test kills and a clock it moves
(``HealingPolicy`` and the clock are injected); the slow one kills a real worker
process under load and sees the endpoint serve again by itself.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from ptdeploy import state
from ptdeploy.workspace import store as st
from ptdeploy.workspace.app import create_app, entity_worker_factory
from ptdeploy.workspace.manager import HealingPolicy, stop_all
from ptdeploy.workspace.optimization_info import ModelDescription, RegistryCatalog

TOKEN = "heal-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BASE = "/api/2.0/serving-endpoints"
POLICY = HealingPolicy(max_restarts=3, backoff_s=2.0, max_backoff_s=60.0, healthy_after_s=600)


class KillableWorker:
    def __init__(self, entity: st.ServedEntity) -> None:
        self.entity, self.task = entity, entity.task
        self.state, self.error = "STOPPED", None
        self.die_on_infer = False

    def start(self) -> None:
        self.state = "LOADING"

    def stop(self) -> None:
        self.state = "STOPPED"

    def kill(self) -> None:
        self.state, self.error = "FAILED", "the worker process was killed by SIGKILL"

    async def infer(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.die_on_infer:
            self.kill()
            raise RuntimeError("worker tiny-1 is gone")
        return {"object": "text_completion", "choices": [{"text": "ok"}]}


class OneModel:
    def describe(self, name: str, version: str) -> ModelDescription:
        return ModelDescription(
            name=name,
            version=version,
            task="llm/v1/completions",
            architecture="LlamaForCausalLM",
            optimizable=True,
            model_type="llama",
            throughput_chunk_size=20,
        )


@pytest.fixture()
def env(tmp_path):
    now = [1000.0]
    workers: list[KillableWorker] = []

    def factory(entity: st.ServedEntity) -> KillableWorker:
        workers.append(KillableWorker(entity))
        return workers[-1]

    app = create_app(
        token=TOKEN,
        store=st.EndpointStore(tmp_path / "endpoints"),
        catalog=OneModel(),
        worker_factory=factory,
        poll_interval=3600,  # the test reconciles itself
        clock=lambda: now[0],
        healing=POLICY,
    )
    with TestClient(app, headers=AUTH) as client:
        served = {"entity_name": "main.default.tiny", "entity_version": "1"}
        served |= {"min_provisioned_throughput": 0, "max_provisioned_throughput": 20}
        body = {"name": "ep", "config": {"served_entities": [served]}}
        assert client.post(BASE, json=body).status_code == 200
        workers[-1].state = "READY"
        reconcile(app)
        yield client, app, workers, now


def reconcile(app) -> None:
    stop_all(app.state.manager.reconcile())


def entity_state(client) -> tuple[str, str, str]:
    ep = client.get(f"{BASE}/ep").json()
    e = ep["config"]["served_entities"][0]["state"]
    return ep["state"]["ready"], e["deployment"], e.get("deployment_state_message", "")


def test_dead_worker_is_restarted_after_its_backoff_and_serves_again(env):
    client, app, workers, now = env
    assert entity_state(client)[0] == "READY"
    workers[-1].kill()
    reconcile(app)
    ready, deployment, message = entity_state(client)
    assert (ready, deployment) == ("NOT_READY", "DEPLOYMENT_RECOVERING")
    assert "killed by SIGKILL" in message and "restart 1 of at most 3" in message
    assert len(workers) == 1  # the backoff has not elapsed: nothing restarted yet
    resp = client.post("/serving-endpoints/ep/invocations", json={"prompt": "x"})
    assert resp.status_code == 503 and resp.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
    assert "RECOVERING" in resp.json()["message"] and resp.headers["Retry-After"]

    now[0] += POLICY.backoff_s
    reconcile(app)
    assert len(workers) == 2 and workers[-1].state == "LOADING"
    assert workers[0].state == "STOPPED"  # the dead one is cleaned up
    assert entity_state(client)[:2] == ("NOT_READY", "DEPLOYMENT_RECOVERING")

    workers[-1].state = "READY"
    reconcile(app)
    assert entity_state(client)[:2] == ("READY", "DEPLOYMENT_READY")
    assert client.post("/serving-endpoints/ep/invocations", json={"prompt": "x"}).status_code == 200
    # recovering never touched the declared config
    assert client.get(f"{BASE}/ep").json()["state"]["config_update"] == "NOT_UPDATING"


def test_backoff_doubles_and_past_the_cap_the_failure_shows_and_restarts_stop(env):
    client, app, workers, now = env
    waits = []
    for restart in range(1, POLICY.max_restarts + 1):
        workers[-1].kill()
        reconcile(app)
        before = len(workers)
        now[0] += POLICY.delay(restart) - 0.5
        reconcile(app)
        assert len(workers) == before  # not before its backoff
        now[0] += 0.5
        reconcile(app)
        assert len(workers) == before + 1
        waits.append(POLICY.delay(restart))
        workers[-1].state = "READY"
        reconcile(app)
        assert entity_state(client)[0] == "READY"
    assert waits == [2.0, 4.0, 8.0]

    workers[-1].kill()  # one death more than the cap allows
    for _ in range(3):
        now[0] += 3600
        reconcile(app)
    assert len(workers) == POLICY.max_restarts + 1  # no restart past the cap
    ready, deployment, message = entity_state(client)
    assert (ready, deployment) == ("NOT_READY", "DEPLOYMENT_FAILED")
    assert "stopped restarting" in message and "after 3 restart(s)" in message
    assert "SIGKILL" in message
    resp = client.post("/serving-endpoints/ep/invocations", json={"prompt": "x"})
    assert resp.status_code == 503 and "stopped restarting" in resp.json()["message"]

    # updating the config deploys it again, with a fresh count
    served = {"entity_name": "main.default.tiny", "entity_version": "1"}
    served |= {"min_provisioned_throughput": 0, "max_provisioned_throughput": 40}
    assert client.put(f"{BASE}/ep/config", json={"served_entities": [served]}).status_code == 200
    workers[-1].state = "READY"
    reconcile(app)
    assert entity_state(client)[:2] == ("READY", "DEPLOYMENT_READY")


def test_a_worker_healthy_long_enough_has_its_restarts_forgotten(env):
    client, app, workers, now = env
    for _ in range(POLICY.max_restarts):
        workers[-1].kill()
        reconcile(app)
        now[0] += POLICY.max_backoff_s
        reconcile(app)
        workers[-1].state = "READY"
        reconcile(app)
    now[0] += POLICY.healthy_after_s
    reconcile(app)
    workers[-1].kill()
    reconcile(app)
    assert "restart 1 of at most 3" in entity_state(client)[2]


def test_request_in_flight_when_the_worker_dies_fails_fast_with_a_retriable_503(env):
    client, app, workers, now = env
    workers[-1].die_on_infer = True
    resp = client.post("/serving-endpoints/ep/invocations", json={"prompt": "x"})
    assert resp.status_code == 503
    assert resp.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
    assert "SIGKILL" in resp.json()["message"] and resp.headers["Retry-After"] == "1"


# ------------------------------------------------------------------ real worker


@pytest.mark.slow
def test_killed_worker_under_load_serves_again_by_itself(registered_tiny_completions, tmp_path):
    name, version = registered_tiny_completions
    uri = state.tracking_uri()
    app = create_app(
        token=TOKEN,
        store=st.EndpointStore(tmp_path / "endpoints"),
        catalog=RegistryCatalog(uri),
        worker_factory=entity_worker_factory(uri),
        poll_interval=0.1,
        healing=HealingPolicy(max_restarts=3, backoff_s=0.2),
    )
    with TestClient(app, headers=AUTH) as client:
        chunk = client.get(f"{BASE}/get-model-optimization-info/{name}/{version}").json()
        served = {"entity_name": name, "entity_version": version}
        served |= {"min_provisioned_throughput": 0}
        served |= {"max_provisioned_throughput": chunk["throughput_chunk_size"]}
        assert client.post(
            BASE, json={"name": "heal", "config": {"served_entities": [served]}}
        ).is_success
        wait_ready(client)
        body = {"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}
        answers: list[tuple[float, int]] = []  # (sent at, status)
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                sent = time.monotonic()
                r = client.post("/serving-endpoints/heal/invocations", json=body)
                answers.append((sent, r.status_code))
                if r.status_code == 503:
                    assert r.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
                    time.sleep(0.05)

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            time.sleep(0.5)
            worker = app.state.manager.active["heal"][served_name(client)]
            killed_at = time.monotonic()
            os.kill(worker.pid, signal.SIGKILL)
            while app.state.manager.active["heal"][served_name(client)] is worker:
                time.sleep(0.05)
            wait_ready(client)
            ready_at = time.monotonic()
            back = ready_at - killed_at
            while not any(sent > ready_at for sent, _ in answers):  # load once it is back
                time.sleep(0.05)
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        statuses = [status for _, status in answers]
        assert set(statuses) <= {200, 503}, statuses
        assert 503 in statuses, "requests in flight when the worker died got a 503"
        assert {status for sent, status in answers if sent > ready_at} == {200}, answers
        resp = client.post("/serving-endpoints/heal/invocations", json=body)
        assert resp.status_code == 200
        print(f"killed worker served again after {back:.1f} s")


def served_name(client) -> str:
    return client.get(f"{BASE}/heal").json()["config"]["served_entities"][0]["name"]


def wait_ready(client, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ep = client.get(f"{BASE}/heal").json()
        if ep["state"] == {"ready": "READY", "config_update": "NOT_UPDATING"}:
            return
        time.sleep(0.1)
    raise AssertionError(f"endpoint not READY after {timeout} s: {ep}")
