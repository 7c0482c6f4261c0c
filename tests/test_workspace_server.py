"""The serving API of the local workspace: shapes, validation, states, auth, routing.

The state machine is driven with controllable workers (a worker that stays LOADING, or
fails on demand, cannot be obtained from a real model); the catalog is a dict of model
descriptions. test_workspace_clients.py runs the same API with real workers, the real
registry and the real clients.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
from fastapi.testclient import TestClient
from ptdeploy.errors import InvalidRequestError, ModelVersionNotFoundError
from ptdeploy.workspace import server as srv
from ptdeploy.workspace import store as st
from ptdeploy.workspace.manager import stop_all
from ptdeploy.workspace.optimization_info import ModelDescription
from ptdeploy.workspace.schemas import parse_request

TOKEN = "test-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BASE = "/api/2.0/serving-endpoints"
CHUNK = 20


class FakeWorker:
    """A worker whose state the test moves; infer echoes what it was asked."""

    def __init__(self, entity: st.ServedEntity) -> None:
        self.entity = entity
        self._state = "STOPPED"
        self.error: str | None = None
        self.task = entity.task
        self.bodies: list[dict[str, Any]] = []

    @property
    def state(self) -> str:
        return self._state

    def start(self) -> None:
        self._state = "LOADING"

    def stop(self) -> None:
        self._state = "STOPPED"

    async def infer(self, body: dict[str, Any]) -> dict[str, Any]:
        self.bodies.append(body)
        if body.get("boom"):
            raise RuntimeError("kaboom")
        if body.get("nan"):  # a model gone wrong: numbers JSON cannot hold
            return {"object": "text_completion", "scores": [float("nan"), float("inf"), 0.25]}
        if isinstance(body.get("max_tokens"), int) and body["max_tokens"] < 1:
            raise InvalidRequestError("max_tokens", f"max_tokens={body['max_tokens']} must be >= 1")
        return {"object": "text_completion", "choices": [{"text": self.entity.name}]}

    async def stream(self, body: dict[str, Any]):
        """Streams the entity's name in two pieces, then the whole answer."""
        # validated as EntityWorker.stream does, before any event ("boom" fails midway)
        parse_request(self.task, {k: v for k, v in body.items() if k != "boom"})
        self.bodies.append(body)
        yield (0, self.entity.name[:1])
        if body.get("boom"):
            raise RuntimeError("kaboom")
        yield (0, self.entity.name[1:])
        yield {
            "object": "text_completion",
            "choices": [{"index": 0, "text": self.entity.name, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
        }


class Catalog:
    def __init__(self) -> None:
        self.models: dict[tuple[str, str], ModelDescription] = {}

    def add(self, name: str, version: str, task: str, optimizable: bool = True) -> None:
        self.models[(name, version)] = ModelDescription(
            name=name,
            version=version,
            task=task,
            architecture="LlamaForCausalLM" if optimizable else "GPT2LMHeadModel",
            optimizable=optimizable,
            model_type="llama" if optimizable else None,
            throughput_chunk_size=CHUNK if optimizable else None,
            reason="" if optimizable else "architecture GPT2LMHeadModel is not supported",
        )

    def describe(self, name: str, version: str) -> ModelDescription:
        try:
            return self.models[(name, str(version))]
        except KeyError:
            raise ModelVersionNotFoundError(
                f"Model version {name}/{version} does not exist."
            ) from None


@pytest.fixture()
def env(tmp_path):
    catalog = Catalog()
    catalog.add("main.default.tiny", "1", "llm/v1/completions")
    catalog.add("main.default.tiny", "2", "llm/v1/completions")
    catalog.add("main.default.chat", "1", "llm/v1/chat")
    catalog.add("main.default.gpt2", "1", "llm/v1/completions", optimizable=False)
    workers: list[FakeWorker] = []

    def factory(entity: st.ServedEntity) -> FakeWorker:
        w = FakeWorker(entity)
        workers.append(w)
        return w

    def make_app():
        return srv.create_app(
            token=TOKEN,
            store=st.EndpointStore(tmp_path / "endpoints"),
            catalog=catalog,
            worker_factory=factory,
            poll_interval=3600,  # the test drives reconciliation itself
        )

    class Env:
        pass

    e = Env()
    e.catalog, e.workers, e.make_app, e.tmp = catalog, workers, make_app, tmp_path
    with TestClient(make_app(), headers=AUTH) as client:
        e.client = client
        e.app = client.app
        yield e


def settle(app) -> None:
    stop_all(app.state.manager.reconcile())


def entity(version: str = "1", lo: int = 0, hi: int = CHUNK, **extra: Any) -> dict[str, Any]:
    return {
        "entity_name": "main.default.tiny",
        "entity_version": version,
        "min_provisioned_throughput": lo,
        "max_provisioned_throughput": hi,
        **extra,
    }


def create(client, name: str = "ep", **config: Any):
    body = {"name": name, "config": {"served_entities": [entity()], **config}}
    return client.post(BASE, json=body)


def ready_all(env) -> None:
    for w in env.workers:
        if w.state == "LOADING":
            w._state = "READY"
    settle(env.app)


# ------------------------------------------------------------------- auth


def test_every_route_needs_the_bearer_token(env):
    anonymous = TestClient(env.app)
    for method, path in [
        ("GET", BASE),
        ("POST", BASE),
        ("GET", f"{BASE}/get-model-optimization-info/main.default.tiny/1"),
        ("POST", "/serving-endpoints/ep/invocations"),
        ("POST", "/serving-endpoints/chat/completions"),
        ("GET", "/no/such/route"),
    ]:
        r = anonymous.request(method, path)
        assert r.status_code == 401, path
        assert r.json()["error_code"] == "UNAUTHENTICATED"
        wrong = anonymous.request(method, path, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 403, path
        assert wrong.json() == {
            "error_code": "PERMISSION_DENIED",
            "message": "Invalid access token.",
        }
    basic = anonymous.get(BASE, headers={"Authorization": f"Basic {TOKEN}"})
    assert basic.status_code == 401
    # host discovery is public (the SDK probes it without credentials), and says nothing
    assert anonymous.get("/.well-known/databricks-config").json() == {"oidc_endpoint": ""}


# ------------------------------------------------------------ create / get


def test_create_answers_pending_config_then_ready(env):
    r = create(env.client)
    assert r.status_code == 200, r.text
    ep = r.json()
    assert ep["state"] == {"ready": "NOT_READY", "config_update": "IN_PROGRESS"}
    assert "config" not in ep
    pending = ep["pending_config"]
    assert pending["config_version"] == 1
    se = pending["served_entities"][0]
    assert se["name"] == "tiny-1"  # Databricks' default: last level of the UC name + version
    assert se["entity_version"] == "1"
    assert se["state"]["deployment"] == "DEPLOYMENT_CREATING"
    assert pending["traffic_config"]["routes"] == [
        {"served_model_name": "tiny-1", "served_entity_name": "tiny-1", "traffic_percentage": 100}
    ]
    assert ep["task"] == "llm/v1/completions"
    assert ep["permission_level"] == "CAN_MANAGE"

    ready_all(env)
    ep = env.client.get(f"{BASE}/ep").json()
    assert ep["state"] == {"ready": "READY", "config_update": "NOT_UPDATING"}
    assert "pending_config" not in ep
    assert ep["config"]["served_entities"][0]["state"] == {
        "deployment": "DEPLOYMENT_READY",
        "deployment_state_message": "",
    }
    assert ep["config"]["served_entities"][0]["max_provisioned_throughput"] == CHUNK
    listed = env.client.get(BASE).json()["endpoints"]
    assert [e["name"] for e in listed] == ["ep"]
    assert listed[0]["config"]["served_entities"] == [
        {"name": "tiny-1", "entity_name": "main.default.tiny", "entity_version": "1"}
    ]


def test_get_answers_the_current_state_not_the_last_background_round(env):
    # the background loop is idle in these tests (poll_interval=3600): only the GET advances
    create(env.client)
    for w in env.workers:
        w._state = "READY"
    ep = env.client.get(f"{BASE}/ep").json()
    assert ep["state"] == {"ready": "READY", "config_update": "NOT_UPDATING"}
    assert ep["config"]["config_version"] == 1 and "pending_config" not in ep


def test_duplicate_create_is_409_and_unknown_endpoints_404(env):
    assert create(env.client).status_code == 200
    dup = create(env.client)
    assert dup.status_code == 409
    assert dup.json()["error_code"] == "RESOURCE_ALREADY_EXISTS"
    for method, path in [
        ("GET", f"{BASE}/nope"),
        ("DELETE", f"{BASE}/nope"),
        ("PUT", f"{BASE}/nope/config"),
        ("POST", "/serving-endpoints/nope/invocations"),
    ]:
        r = env.client.request(method, path, json={"served_entities": [entity()]})
        assert r.status_code == 404, path
        assert r.json() == {
            "error_code": "RESOURCE_DOES_NOT_EXIST",
            "message": "Endpoint with name 'nope' does not exist.",
        }


@pytest.mark.parametrize(
    ("served", "fragment"),
    [
        (
            entity(hi=30),
            "max_provisioned_throughput=30 is not a multiple of the throughput chunk size 20",
        ),
        (entity(lo=-20), "min_provisioned_throughput=-20 is negative"),
        (
            entity(lo=40, hi=20),
            "min_provisioned_throughput=40 is greater than max_provisioned_throughput=20",
        ),
        (entity(hi=0), "max_provisioned_throughput=0 is not valid"),
        (
            entity(lo=20, hi=40, scale_to_zero_enabled=True),
            "scale_to_zero_enabled=true needs min_provisioned_throughput=0",
        ),
        (entity(hi="abc"), "max_provisioned_throughput='abc' is not valid"),
        (entity(version="9"), "main.default.tiny/9 does not exist"),
        ({"entity_version": "1", "max_provisioned_throughput": 20}, "entity_name is required"),
        ({"entity_name": "main.default.tiny"}, "entity_version is required"),
        (
            {"entity_name": "main.default.tiny", "entity_version": "1"},
            "min_provisioned_throughput and max_provisioned_throughput",
        ),
        (
            {
                "entity_name": "main.default.gpt2",
                "entity_version": "1",
                "max_provisioned_throughput": 20,
            },
            "not eligible for provisioned throughput: architecture GPT2LMHeadModel",
        ),
        (entity(name="bad name!"), "served_entities[0].name='bad name!' is not valid"),
        (entity(provisioned_model_units=50), "provisioned_model_units is not valid"),
    ],
)
def test_invalid_served_entity_is_400_naming_the_field_and_writes_nothing(env, served, fragment):
    r = env.client.post(BASE, json={"name": "ep", "config": {"served_entities": [served]}})
    assert r.status_code == 400, r.text
    assert r.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert fragment in r.json()["message"]
    assert "config.served_entities[0]" in r.json()["message"]
    assert env.client.get(BASE).json() == {"endpoints": []}
    assert not list((env.tmp / "endpoints").glob("*.json"))
    assert env.workers == []


def test_chunk_error_names_the_valid_multiples(env):
    r = env.client.post(BASE, json={"name": "ep", "config": {"served_entities": [entity(hi=50)]}})
    assert "valid values: 20, 40, 60, ... (nearest: 40 or 60)" in r.json()["message"]


@pytest.mark.parametrize("name", ["", "has space", "a/b", "x" * 64, "dot.ted", 12])
def test_invalid_endpoint_names(env, name):
    r = env.client.post(BASE, json={"name": name, "config": {"served_entities": [entity()]}})
    assert r.status_code == 400
    assert r.json()["message"].startswith("name")


def test_malformed_json_and_non_object_bodies(env):
    r = env.client.post(
        BASE, content=b'{"name": "ep", ', headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400
    assert r.json()["error_code"] == "MALFORMED_REQUEST"
    assert "invalid JSON" in r.json()["message"]
    r = env.client.post(BASE, content=b"[1, 2]")
    assert r.json()["error_code"] == "MALFORMED_REQUEST"
    # The documentation's header typo ("Context-Type": "text/json") must not matter.
    body = b'{"name": "ep", "config": {"served_entities": [{"entity_name": "main.default.tiny", "entity_version": 1, "max_provisioned_throughput": 40}]}}'
    r = env.client.post(
        BASE, content=body, headers={"Context-Type": "text/json", "Content-Type": "text/plain"}
    )
    assert r.status_code == 200, r.text


def test_traffic_config_validation(env):
    two = [entity("1"), entity("2")]

    def post(traffic):
        return env.client.post(
            BASE, json={"name": "ep", "config": {"served_entities": two, "traffic_config": traffic}}
        )

    r = post(
        {
            "routes": [
                {"served_entity_name": "tiny-1", "traffic_percentage": 60},
                {"served_entity_name": "tiny-2", "traffic_percentage": 30},
            ]
        }
    )
    assert r.status_code == 400 and "must add up to 100; got 90" in r.json()["message"]
    r = post({"routes": [{"served_entity_name": "nope", "traffic_percentage": 100}]})
    assert r.status_code == 400 and "valid names: tiny-1, tiny-2" in r.json()["message"]
    r = post({"routes": [{"served_model_name": "tiny-1", "traffic_percentage": 100}]})
    assert r.status_code == 200, r.text  # served_model_name (older clients) is accepted
    dup = env.client.post(
        BASE, json={"name": "ep2", "config": {"served_entities": [entity("1"), entity("1")]}}
    )
    assert dup.status_code == 400 and "tiny-1 appear more than once" in dup.json()["message"]


# ------------------------------------------------------------------ updates


def test_update_keeps_old_config_serving_until_new_workers_are_ready(env):
    create(env.client)
    ready_all(env)
    r = env.client.put(f"{BASE}/ep/config", json={"served_entities": [entity("2", hi=40)]})
    assert r.status_code == 200, r.text
    ep = r.json()
    assert ep["state"] == {"ready": "READY", "config_update": "IN_PROGRESS"}
    assert ep["config"]["served_entities"][0]["entity_version"] == "1"
    assert ep["pending_config"]["served_entities"][0]["entity_version"] == "2"
    assert ep["pending_config"]["config_version"] == 2
    # the old config still answers
    q = env.client.post("/serving-endpoints/ep/invocations", json={"prompt": "hi"})
    assert q.status_code == 200 and q.headers["served-model-name"] == "tiny-1"
    # an update while one is in progress is refused, and changes nothing
    again = env.client.put(f"{BASE}/ep/config", json={"served_entities": [entity("1")]})
    assert again.status_code == 409
    assert again.json()["error_code"] == "RESOURCE_CONFLICT"
    assert "IN_PROGRESS" in again.json()["message"]
    old_worker = env.workers[0]
    ready_all(env)
    ep = env.client.get(f"{BASE}/ep").json()
    assert ep["state"] == {"ready": "READY", "config_update": "NOT_UPDATING"}
    assert ep["config"]["served_entities"][0]["entity_version"] == "2"
    assert ep["config"]["config_version"] == 2
    assert old_worker.state == "STOPPED"
    q = env.client.post("/serving-endpoints/ep/invocations", json={"prompt": "hi"})
    assert q.headers["served-model-name"] == "tiny-2"


def test_throughput_only_update_reuses_the_loaded_worker(env):
    create(env.client)
    ready_all(env)
    r = env.client.put(f"{BASE}/ep/config", json={"served_entities": [entity("1", hi=60)]})
    assert r.status_code == 200
    settle(env.app)
    ep = env.client.get(f"{BASE}/ep").json()
    assert ep["state"]["config_update"] == "NOT_UPDATING"
    assert ep["config"]["served_entities"][0]["max_provisioned_throughput"] == 60
    assert len(env.workers) == 1 and env.workers[0].state == "READY"


def test_failed_update_keeps_serving_the_old_config(env):
    create(env.client)
    ready_all(env)
    env.client.put(f"{BASE}/ep/config", json={"served_entities": [entity("2")]})
    new = env.workers[-1]
    new._state, new.error = "FAILED", "cannot load weights: file is corrupt"
    settle(env.app)
    ep = env.client.get(f"{BASE}/ep").json()
    assert ep["state"] == {"ready": "READY", "config_update": "UPDATE_FAILED"}
    failed = ep["pending_config"]["served_entities"][0]["state"]
    assert failed == {
        "deployment": "DEPLOYMENT_FAILED",
        "deployment_state_message": "cannot load weights: file is corrupt",
    }
    assert (
        env.client.post("/serving-endpoints/ep/invocations", json={"prompt": "x"}).status_code
        == 200
    )
    # a new update is allowed after a failure
    assert (
        env.client.put(
            f"{BASE}/ep/config", json={"served_entities": [entity("1", hi=40)]}
        ).status_code
        == 200
    )


def test_failed_create_stays_not_ready_with_the_error(env):
    create(env.client)
    env.workers[0]._state, env.workers[0].error = "FAILED", "out of memory"
    settle(env.app)
    ep = env.client.get(f"{BASE}/ep").json()
    assert ep["state"] == {"ready": "NOT_READY", "config_update": "UPDATE_FAILED"}
    assert (
        ep["pending_config"]["served_entities"][0]["state"]["deployment_state_message"]
        == "out of memory"
    )
    q = env.client.post("/serving-endpoints/ep/invocations", json={"prompt": "x"})
    assert q.status_code == 503 and q.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"


def test_delete_stops_workers(env):
    create(env.client)
    ready_all(env)
    assert env.client.delete(f"{BASE}/ep").json() == {}
    assert env.workers[0].state == "STOPPED"
    assert env.client.get(f"{BASE}/ep").status_code == 404
    assert create(env.client).status_code == 200  # the name is free again


# ------------------------------------------------------------- persistence


def test_restart_recovers_endpoints_through_not_ready(env):
    create(env.client, tags=None)
    ready_all(env)
    env.client.patch(f"{BASE}/ep/tags", json={"add_tags": [{"key": "team", "value": "ml"}]})
    with TestClient(env.make_app(), headers=AUTH) as again:
        ep = again.get(f"{BASE}/ep").json()
        assert ep["state"] == {"ready": "NOT_READY", "config_update": "NOT_UPDATING"}
        assert ep["config"]["served_entities"][0]["state"]["deployment"] == "DEPLOYMENT_RECOVERING"
        assert ep["tags"] == [{"key": "team", "value": "ml"}]
        assert (
            again.post("/serving-endpoints/ep/invocations", json={"prompt": "x"}).status_code == 503
        )
        for w in env.workers[1:]:
            w._state = "READY"
        settle(again.app)
        assert again.get(f"{BASE}/ep").json()["state"]["ready"] == "READY"


# ------------------------------------------------------------ invocations


def test_traffic_split_follows_the_routes(env):
    routes = {
        "routes": [
            {"served_entity_name": "tiny-1", "traffic_percentage": 70},
            {"served_entity_name": "tiny-2", "traffic_percentage": 30},
        ]
    }
    r = env.client.post(
        BASE,
        json={
            "name": "ep",
            "config": {"served_entities": [entity("1"), entity("2")], "traffic_config": routes},
        },
    )
    assert r.status_code == 200, r.text
    ready_all(env)
    served = Counter(
        env.client.post("/serving-endpoints/ep/invocations", json={"prompt": "x"}).headers[
            "served-model-name"
        ]
        for _ in range(100)
    )
    assert served == {"tiny-1": 70, "tiny-2": 30}


def test_task_mismatch_and_openai_routes(env):
    create(env.client)
    ready_all(env)
    r = env.client.post(
        "/serving-endpoints/ep/invocations", json={"messages": [{"role": "user", "content": "hi"}]}
    )
    assert r.status_code == 400
    assert "serves llm/v1/completions requests (field 'prompt')" in r.json()["message"]
    r = env.client.post("/serving-endpoints/chat/completions", json={"model": "ep", "messages": []})
    assert r.status_code == 400 and "/serving-endpoints/completions" in r.json()["message"]
    r = env.client.post("/serving-endpoints/completions", json={"model": "ep", "prompt": "hi"})
    assert r.status_code == 200 and r.json()["model"] == "ep"
    assert "model" not in env.workers[0].bodies[-1]
    r = env.client.post("/serving-endpoints/completions", json={"prompt": "hi"})
    assert r.status_code == 400 and r.json()["message"].startswith("model is required")


def test_mlflow_wrappers_are_unwrapped(env):
    create(env.client)
    ready_all(env)
    post = lambda body: env.client.post("/serving-endpoints/ep/invocations", json=body)  # noqa: E731
    assert post({"inputs": {"prompt": "a"}, "params": {"max_tokens": 3}}).status_code == 200
    assert env.workers[0].bodies[-1] == {"prompt": "a", "max_tokens": 3}
    assert post({"dataframe_records": [{"prompt": "a"}, {"prompt": "b"}]}).status_code == 200
    assert env.workers[0].bodies[-1] == {"prompt": ["a", "b"]}
    assert post({"dataframe_split": {"columns": ["prompt"], "data": [["c"]]}}).status_code == 200
    assert env.workers[0].bodies[-1] == {"prompt": "c"}


def _events(r) -> list:
    assert r.headers["content-type"].startswith("text/event-stream")
    lines = [line for line in r.text.split("\n\n") if line]
    assert all(line.startswith("data: ") for line in lines)
    return [line[6:] if line == "data: [DONE]" else json.loads(line[6:]) for line in lines]


def test_stream_true_answers_server_sent_events(env):
    """Chunks as OpenAI and Databricks stream them, [DONE] last, usage when asked."""
    create(env.client)
    ready_all(env)
    r = env.client.post(
        "/serving-endpoints/ep/invocations",
        json={"prompt": "x", "stream": True, "stream_options": {"include_usage": True}},
    )
    assert r.status_code == 200
    events = _events(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert len({c["id"] for c in chunks}) == 1  # one answer, one id
    text = "".join(ch["text"] for c in chunks for ch in c["choices"])
    assert text == env.workers[0].entity.name
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 3


def test_stream_errors_before_and_after_the_first_event(env):
    create(env.client)
    ready_all(env)
    post = env.client.post
    # refused before anything is sent: an ordinary 400
    bad = {"prompt": "x", "stream": True, "stream_options": {"include_usage": "yes"}}
    r = post("/serving-endpoints/ep/invocations", json=bad)
    assert r.status_code == 400 and "include_usage" in r.json()["message"]
    # failing midway: an error event in Databricks' shape, and no [DONE]
    r = post("/serving-endpoints/ep/invocations", json={"prompt": "x", "stream": True, "boom": 1})
    events = _events(r)
    assert events[-1]["error_code"] == "INTERNAL_ERROR" and "kaboom" in events[-1]["message"]
    assert "[DONE]" not in events


def test_worker_errors_do_not_break_the_endpoint(env):
    create(env.client)
    ready_all(env)
    r = env.client.post("/serving-endpoints/ep/invocations", json={"prompt": "x", "boom": True})
    assert r.status_code == 500 and "kaboom" in r.json()["message"]
    assert (
        env.client.post("/serving-endpoints/ep/invocations", json={"prompt": "x"}).status_code
        == 200
    )
    r = env.client.post("/serving-endpoints/ep/invocations", json={"prompt": "x", "stream": "yes"})
    assert r.status_code == 400 and "stream" in r.json()["message"]
    r = env.client.post("/serving-endpoints/ep/invocations", json={"prompt": "x", "max_tokens": -1})
    assert r.status_code == 400
    assert r.json() == {
        "error_code": "INVALID_PARAMETER_VALUE",
        "message": "max_tokens=-1 must be >= 1",
    }
    assert (
        env.client.post("/serving-endpoints/ep/invocations", json={"prompt": "x"}).status_code
        == 200
    )


def test_answers_are_compact_json_and_stay_valid_with_nan(env):
    """Query answers are rendered by pydantic-core (``FastJSONResponse``): the bytes
    Starlette's renderer gives, and a NaN or infinity from the model becomes null
    instead of an answer no JSON parser reads (or a 500)."""
    create(env.client)
    ready_all(env)
    r = env.client.post("/serving-endpoints/ep/invocations", json={"prompt": "x"})
    assert r.content == b'{"object":"text_completion","choices":[{"text":"tiny-1"}]}'
    r = env.client.post("/serving-endpoints/ep/invocations", json={"prompt": "x", "nan": True})
    assert r.status_code == 200
    assert json.loads(r.content) == {"object": "text_completion", "scores": [None, None, 0.25]}


def test_a_worker_that_cannot_start_leaves_nothing_behind(env, tmp_path):
    def broken(entity):
        raise OSError("cannot fork")

    app = srv.create_app(
        token=TOKEN,
        store=st.EndpointStore(tmp_path / "other"),
        catalog=env.catalog,
        worker_factory=broken,
        poll_interval=3600,
    )
    with TestClient(app, headers=AUTH, raise_server_exceptions=False) as client:
        r = create(client)
        assert r.status_code == 500 and "cannot fork" in r.json()["message"]
        assert client.get(BASE).json() == {"endpoints": []}
    assert not list((tmp_path / "other").glob("*.json"))


def test_ai_gateway_rate_limit_tags_and_rate_limits(env):
    create(env.client)
    ready_all(env)
    gw = {
        "usage_tracking_config": {"enabled": True},
        "rate_limits": [{"calls": 2, "renewal_period": "minute", "key": "endpoint"}],
    }
    r = env.client.put(f"{BASE}/ep/ai-gateway", json=gw)
    assert r.status_code == 200 and r.json() == gw
    codes = [
        env.client.post("/serving-endpoints/ep/invocations", json={"prompt": "x"}).status_code
        for _ in range(3)
    ]
    assert codes == [200, 200, 429]
    bad = env.client.put(
        f"{BASE}/ep/ai-gateway", json={"rate_limits": [{"calls": 1, "renewal_period": "hour"}]}
    )
    assert bad.status_code == 400 and "renewal_period='hour'" in bad.json()["message"]
    tags = env.client.patch(
        f"{BASE}/ep/tags", json={"add_tags": [{"key": "a", "value": "1"}, {"key": "b"}]}
    )
    assert tags.json() == {"tags": [{"key": "a", "value": "1"}, {"key": "b"}]}
    tags = env.client.patch(f"{BASE}/ep/tags", json={"delete_tags": ["a"]})
    assert tags.json() == {"tags": [{"key": "b"}]}
    limits = env.client.put(
        f"{BASE}/ep/rate-limits", json={"rate_limits": [{"calls": 5, "renewal_period": "minute"}]}
    )
    assert limits.json() == {"rate_limits": [{"calls": 5, "renewal_period": "minute"}]}


def test_optimization_info_route(env):
    r = env.client.get(f"{BASE}/get-model-optimization-info/main.default.tiny/1")
    assert r.json() == {"optimizable": True, "model_type": "llama", "throughput_chunk_size": CHUNK}
    r = env.client.get(f"{BASE}/get-model-optimization-info/main.default.gpt2/1")
    assert r.json() == {"optimizable": False}
    r = env.client.get(f"{BASE}/get-model-optimization-info/main.default.tiny/7")
    assert r.status_code == 404 and r.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    assert "main.default.tiny/7" in r.json()["message"]


def test_model_units_served_entities(env):
    """Models that get-model-optimization-info sizes in model units (GPT OSS, Gemma 3, Llama 4
    Maverick on Databricks) take provisioned_model_units, multiples of their chunk."""
    gpt_oss = ("system.ai.gpt_oss_20b", "1")
    env.catalog.models[gpt_oss] = ModelDescription(
        *gpt_oss, task="llm/v1/chat", architecture="GptOssForCausalLM", optimizable=True,
        model_type="gpt_oss", model_unit_chunk_size=50,
    )  # fmt: skip
    r = env.client.get(f"{BASE}/get-model-optimization-info/system.ai.gpt_oss_20b/1")
    assert r.json() == {"optimizable": True, "model_type": "gpt_oss", "model_unit_chunk_size": 50}
    units = {"entity_name": gpt_oss[0], "entity_version": "1"}
    for served, fragment in [
        (units | {"provisioned_model_units": 75}, "=75 is not a multiple of the model unit chunk"),
        (units | {"provisioned_model_units": 0}, "provisioned_model_units=0 is not valid"),
        (units | {"max_provisioned_throughput": CHUNK}, "give provisioned_model_units, a multiple"),
        (units | {"provisioned_model_units": 50, "scale_to_zero_enabled": True}, "scale_to_zero"),
        (units, "the compute size is missing; give provisioned_model_units"),
    ]:
        r = env.client.post(BASE, json={"name": "oss", "config": {"served_entities": [served]}})
        assert r.status_code == 400, served
        assert fragment in r.json()["message"], r.json()["message"]
    assert env.workers == []
    served = units | {"provisioned_model_units": 100}
    r = env.client.post(BASE, json={"name": "oss", "config": {"served_entities": [served]}})
    assert r.status_code == 200, r.text
    ready_all(env)
    [se] = env.client.get(f"{BASE}/oss").json()["config"]["served_entities"]
    assert se["provisioned_model_units"] == 100 and "max_provisioned_throughput" not in se


def test_unknown_route_answers_databricks_shape(env):
    r = env.client.get("/api/2.0/clusters/list")
    assert r.status_code == 404
    assert r.json() == {
        "error_code": "ENDPOINT_NOT_FOUND",
        "message": "No API found for 'GET /api/2.0/clusters/list'",
    }


def test_restart_during_an_update_resumes_it(env):
    create(env.client)
    ready_all(env)
    env.client.put(f"{BASE}/ep/config", json={"served_entities": [entity("2")]})
    with TestClient(env.make_app(), headers=AUTH) as again:
        ep = again.get(f"{BASE}/ep").json()
        assert ep["state"]["config_update"] == "IN_PROGRESS"
        assert ep["pending_config"]["served_entities"][0]["entity_version"] == "2"
        for w in env.workers:
            if w.state == "LOADING":
                w._state = "READY"
        settle(again.app)
        ep = again.get(f"{BASE}/ep").json()
        assert ep["state"] == {"ready": "READY", "config_update": "NOT_UPDATING"}
        assert ep["config"]["served_entities"][0]["entity_version"] == "2"


def test_listening_socket_is_loopback_tcp_with_nodelay_on_accepted_connections():
    """Accepted connections must get TCP_NODELAY (keep-alive SDK clients otherwise wait
    for delayed ACKs); the server binds 127.0.0.1 only."""
    import asyncio
    import socket

    from ptdeploy.workspace.server import listening_socket

    sock = listening_socket(0)
    try:
        assert sock.getsockname()[0] == "127.0.0.1"
        assert sock.proto == socket.IPPROTO_TCP
        nodelay: list[int] = []

        async def main() -> None:
            def on_connect(reader, writer):
                peer = writer.get_extra_info("socket")
                nodelay.append(peer.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                writer.close()

            server = await asyncio.start_server(on_connect, sock=sock)
            _, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
            for _ in range(100):
                if nodelay:
                    break
                await asyncio.sleep(0.01)
            writer.close()
            server.close()

        asyncio.run(main())
        assert nodelay and nodelay[0] != 0
    finally:
        sock.close()
