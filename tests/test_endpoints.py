"""create_or_update / wait_until_ready / get / delete against a fake serving API.

The fake replaces only the HTTP layer: ``FakeServingApi.do`` answers the serving REST
routes with JSON shaped like Databricks' (``ServingEndpointDetailed`` bodies), and the
real ``databricks-sdk`` ``ServingEndpointsAPI`` runs on top of it, so request bodies are
serialized and answers parsed by the SDK itself. Errors are the SDK's own classes for the
error codes Databricks sends (``RESOURCE_DOES_NOT_EXIST``, ``RESOURCE_ALREADY_EXISTS``...).
Time is a ``FakeClock``: nothing sleeps. The same public functions are exercised against
the real local workspace by the integration tests.
"""

from __future__ import annotations

import copy
import time
import uuid
from types import SimpleNamespace

import pytest
from databricks.sdk.errors.platform import (
    InvalidParameterValue,
    ResourceAlreadyExists,
    ResourceConflict,
    ResourceDoesNotExist,
)
from databricks.sdk.mixins.open_ai_client import ServingEndpointsExt
from databricks.sdk.service.serving import EndpointStateConfigUpdate, EndpointStateReady
from fakes import FakeClock
from ptdeploy.errors import (
    EndpointConfigError,
    EndpointError,
    EndpointNotFoundError,
    EndpointTimeoutError,
)
from ptdeploy.serving.endpoints import (
    EndpointSpec,
    GatewaySpec,
    InferenceTable,
    RateLimit,
    ServedEntitySpec,
    check_endpoint_name,
    create_or_update,
    delete_endpoint,
    describe_state,
    get_endpoint,
    wait_until_ready,
)
from ptdeploy.serving.throughput import ModelUnitsPlan, ThroughputPlan

API = "/api/2.0/serving-endpoints"
MODEL = "main.default.llama_chat"


class FakeServingApi:
    """The serving control plane, in memory, with Databricks-shaped answers.

    After a create or config update the endpoint is ``NOT_READY``/``IN_PROGRESS`` with a
    ``pending_config`` for ``polls_to_ready`` GETs, then becomes ``READY``/``NOT_UPDATING``
    (or ``UPDATE_FAILED`` with ``fail_message``). ``polls_to_ready=None`` never finishes.
    """

    def __init__(self, polls_to_ready: int | None = 2) -> None:
        self._cfg = SimpleNamespace(
            workspace_id=None, host="https://adb-1234.5.azuredatabricks.net"
        )
        self.endpoints: dict[str, dict] = {}
        self.countdown: dict[str, int | None] = {}
        self.polls_to_ready = polls_to_ready
        self.fail_message: str | None = None
        self.calls: list[tuple[str, str, dict | None]] = []
        self.before_create = None  # hook: runs just before a create is handled
        self.conflicts_on_update = 0  # next N config updates meet a concurrent update
        self.conflicts_raised = 0  # 409s answered to config updates

    # ----------------------------------------------------------- building state
    def add_endpoint(
        self, name: str, version: str = "1", *, in_progress_polls: int | None = 0
    ) -> dict:
        """An existing endpoint serving MODEL ``version`` (READY unless polls given)."""
        entity = {
            "name": f"llama_chat-{version}",
            "entity_name": MODEL,
            "entity_version": version,
            "min_provisioned_throughput": 980,
            "max_provisioned_throughput": 1960,
            "scale_to_zero_enabled": False,
        }
        self._store_new(name, {"name": name, "served_entities": [entity]}, tags=[])
        self._finish(name)
        if in_progress_polls != 0:  # None: an update that never ends
            self._start_update(name, {"served_entities": [entity]}, in_progress_polls)
        return self.endpoints[name]

    def _now_ms(self) -> int:
        return 1_700_000_000_000 + len(self.calls)

    def _entities(self, config: dict, deployment: str, message: str) -> list[dict]:
        out = []
        for se in config.get("served_entities", []):
            entry = dict(se)
            entry.setdefault(
                "name", f"{se['entity_name'].rsplit('.', 1)[-1]}-{se['entity_version']}"
            )
            entry.update(
                creator="someone@example.com",
                creation_timestamp=self._now_ms(),
                state={"deployment": deployment, "deployment_state_message": message},
            )
            out.append(entry)
        return out

    def _pending(self, config: dict, version: int) -> dict:
        entities = self._entities(config, "DEPLOYMENT_CREATING", "Creating the served entity.")
        routes = (config.get("traffic_config") or {}).get("routes") or [
            {
                "served_model_name": e["name"],
                "served_entity_name": e["name"],
                "traffic_percentage": 100,
            }
            for e in entities[:1]
        ]
        return {
            "config_version": version,
            "start_time": self._now_ms(),
            "served_entities": entities,
            "traffic_config": {"routes": routes},
        }

    def _store_new(self, name: str, config: dict, tags: list[dict]) -> None:
        self.endpoints[name] = {
            "name": name,
            "id": uuid.uuid4().hex,
            "creator": "someone@example.com",
            "creation_timestamp": self._now_ms(),
            "last_updated_timestamp": self._now_ms(),
            "state": {"ready": "NOT_READY", "config_update": "IN_PROGRESS"},
            "pending_config": self._pending(config, 1),
            "permission_level": "CAN_MANAGE",
            "route_optimized": False,
            "task": "llm/v1/chat",
            "tags": tags,
        }
        self.countdown[name] = self.polls_to_ready

    def _start_update(self, name: str, config: dict, polls: int | None) -> None:
        ep = self.endpoints[name]
        version = (ep.get("config") or {}).get("config_version", 0) + 1
        ep["pending_config"] = self._pending(config, version)
        ep["state"] = {"ready": ep["state"]["ready"], "config_update": "IN_PROGRESS"}
        self.countdown[name] = polls

    def _finish(self, name: str) -> None:
        ep = self.endpoints[name]
        pending = ep.pop("pending_config")
        if self.fail_message:
            for se in pending["served_entities"]:
                se["state"] = {
                    "deployment": "DEPLOYMENT_FAILED",
                    "deployment_state_message": self.fail_message,
                }
            ep["pending_config"] = pending
            ep["state"] = {
                "ready": "READY" if ep.get("config") else "NOT_READY",
                "config_update": "UPDATE_FAILED",
            }
            return
        for se in pending["served_entities"]:
            se["state"] = {"deployment": "DEPLOYMENT_READY", "deployment_state_message": ""}
        pending.pop("start_time", None)
        ep["config"] = pending
        ep["state"] = {"ready": "READY", "config_update": "NOT_UPDATING"}

    def _get(self, name: str) -> dict:
        if name not in self.endpoints:
            raise ResourceDoesNotExist(
                f"Endpoint with name '{name}' does not exist.", error_code="RESOURCE_DOES_NOT_EXIST"
            )
        return self.endpoints[name]

    # -------------------------------------------------------------------- HTTP
    def do(
        self,
        method,
        path=None,
        url=None,
        query=None,
        headers=None,
        body=None,
        raw=False,
        files=None,
        data=None,
        auth=None,
        response_headers=None,
    ):
        self.calls.append((method, path, copy.deepcopy(body)))
        parts = path[len(API) :].strip("/").split("/") if path.startswith(API) else []
        if method == "POST" and parts == [""]:
            return self._create(body)
        name = parts[0]
        if method == "GET" and len(parts) == 1:
            ep = self._get(name)
            if ep["state"]["config_update"] == "IN_PROGRESS" and self.countdown[name] is not None:
                if self.countdown[name] <= 0:
                    self._finish(name)
                else:
                    self.countdown[name] -= 1
            return copy.deepcopy(ep)
        if method == "DELETE" and len(parts) == 1:
            self._get(name)
            del self.endpoints[name]
            return {}
        if method == "PUT" and parts[1:] == ["config"]:
            return self._update_config(name, body)
        if method == "PUT" and parts[1:] == ["ai-gateway"]:
            self._get(name)["ai_gateway"] = copy.deepcopy(body)
            return copy.deepcopy(body)
        if method == "PATCH" and parts[1:] == ["tags"]:
            ep = self._get(name)
            tags = {t["key"]: t.get("value") for t in ep.get("tags", [])}
            tags.update({t["key"]: t.get("value") for t in body.get("add_tags", [])})
            for key in body.get("delete_tags", []):
                tags.pop(key, None)
            ep["tags"] = [{"key": k, "value": v} for k, v in tags.items()]
            return {"tags": ep["tags"]}
        raise AssertionError(f"unexpected call {method} {path}")

    def _create(self, body: dict) -> dict:
        if self.before_create:
            self.before_create()
        name = body["name"]
        if name in self.endpoints:
            raise ResourceAlreadyExists(
                f"Endpoint with name '{name}' already exists.", error_code="RESOURCE_ALREADY_EXISTS"
            )
        for se in body["config"]["served_entities"]:
            if se.get("max_provisioned_throughput", 980) % 980:
                raise InvalidParameterValue(
                    "max_provisioned_throughput must be a multiple of 980.",
                    error_code="INVALID_PARAMETER_VALUE",
                )
        self._store_new(name, body["config"], body.get("tags", []))
        return copy.deepcopy(self.endpoints[name])

    def _update_config(self, name: str, body: dict) -> dict:
        ep = self._get(name)
        if self.conflicts_on_update:
            self.conflicts_on_update -= 1
            self._start_update(name, {"served_entities": ep["config"]["served_entities"]}, 1)
        if ep["state"]["config_update"] == "IN_PROGRESS":
            self.conflicts_raised += 1
            raise ResourceConflict(
                f"Endpoint '{name}' is currently being updated; retry when the update completes.",
                error_code="RESOURCE_CONFLICT",
            )
        self._start_update(name, body, self.polls_to_ready)
        return copy.deepcopy(ep)

    def count(self, method: str, suffix: str = "") -> int:
        return sum(1 for m, p, _ in self.calls if m == method and p.endswith(suffix))


def fake_workspace(api: FakeServingApi):
    """The ``WorkspaceClient`` surface ptdeploy.serving.endpoints uses, over the fake HTTP layer."""
    return SimpleNamespace(
        serving_endpoints=ServingEndpointsExt(api), api_client=api, config=api._cfg
    )


@pytest.fixture
def api():
    return FakeServingApi()


@pytest.fixture
def w(api):
    return fake_workspace(api)


@pytest.fixture
def clock(monkeypatch):
    # A real sleep anywhere in the code under test would be a bug: make it loud.
    monkeypatch.setattr(time, "sleep", lambda s: pytest.fail(f"time.sleep({s}) called"))
    return FakeClock()


def spec(version=2, **kwargs) -> EndpointSpec:
    return EndpointSpec(
        name="llama-chat",
        entity_name=MODEL,
        entity_version=version,
        plan=ThroughputPlan.from_chunks(980, 1, 2),
        **kwargs,
    )


# ------------------------------------------------------------------ create / update


def test_creates_when_absent(api, w, clock):
    ep = create_or_update(w, spec(tags={"team": "ml"}), clock=clock, progress=False)
    assert api.count("POST") == 1 and api.count("PUT", "/config") == 0
    body = next(b for m, _, b in api.calls if m == "POST")
    assert body["name"] == "llama-chat"
    assert body["config"]["served_entities"] == [
        {
            "name": "llama_chat-2",
            "entity_name": MODEL,
            "entity_version": "2",
            "min_provisioned_throughput": 980,
            "max_provisioned_throughput": 1960,
            "scale_to_zero_enabled": False,
        }
    ]
    # the user's tags, and the one that lets `ptdeploy cleanup` find what ptdeploy created
    assert body["tags"] == [
        {"key": "team", "value": "ml"},
        {"key": "created_by", "value": "ptdeploy"},
    ]
    assert ep.state.ready == EndpointStateReady.READY
    assert ep.state.config_update == EndpointStateConfigUpdate.NOT_UPDATING
    assert ep.config.served_entities[0].entity_version == "2"
    assert clock.sleeps  # it polled, on the fake clock


def test_updates_when_present_never_duplicates(api, w, clock):
    api.add_endpoint("llama-chat", version="1")
    ep = create_or_update(w, spec(version=2), clock=clock, progress=False)
    assert api.count("POST") == 0
    assert api.count("PUT", "/config") == 1
    assert list(api.endpoints) == ["llama-chat"]
    assert [se.entity_version for se in ep.config.served_entities] == ["2"]
    assert ep.config.config_version == 2


def test_running_twice_changes_nothing_the_second_time(api, w, clock):
    create_or_update(w, spec(), clock=clock, progress=False)
    before = (api.count("POST"), api.count("PUT"), api.count("PATCH"))
    ep = create_or_update(w, spec(), clock=clock, progress=False)
    assert (api.count("POST"), api.count("PUT"), api.count("PATCH")) == before
    assert ep.config.config_version == 1
    # ... unless asked to redeploy anyway
    create_or_update(w, spec(), clock=clock, progress=False, force_update=True)
    assert api.count("PUT", "/config") == 1


def test_update_waits_out_an_update_in_progress(api, w, clock):
    api.add_endpoint("llama-chat", version="1", in_progress_polls=3)
    # The fake answers 409 to a config update while one is IN_PROGRESS: none was answered.
    ep = create_or_update(w, spec(version=2), clock=clock, progress=False)
    assert api.conflicts_raised == 0
    put_index = next(i for i, (m, p, _) in enumerate(api.calls) if m == "PUT")
    gets_before = [c for c in api.calls[:put_index] if c[0] == "GET"]
    assert len(gets_before) >= 4
    assert [se.entity_version for se in ep.config.served_entities] == ["2"]


def test_concurrent_create_409_falls_back_to_update(api, w, clock):
    # Someone else creates the endpoint between our GET (404) and our POST.
    api.before_create = lambda: (
        api.add_endpoint("llama-chat", version="1", in_progress_polls=1),
        setattr(api, "before_create", None),
    )
    ep = create_or_update(w, spec(version=2), clock=clock, progress=False)
    assert api.count("POST") == 1  # the create that lost the race
    assert api.count("PUT", "/config") == 1  # then an update, no crash
    assert list(api.endpoints) == ["llama-chat"]
    assert [se.entity_version for se in ep.config.served_entities] == ["2"]


def test_update_racing_another_update_is_retried(api, w, clock):
    api.add_endpoint("llama-chat", version="1")
    api.conflicts_on_update = 1
    ep = create_or_update(w, spec(version=3), clock=clock, progress=False)
    assert api.count("PUT", "/config") == 2
    assert api.conflicts_raised == 1
    assert [se.entity_version for se in ep.config.served_entities] == ["3"]


def test_update_failed_raises_with_the_endpoint_message(api, w, clock):
    api.fail_message = "Failed to provision GPU capacity in region westeurope."
    with pytest.raises(EndpointError) as err:
        create_or_update(w, spec(), clock=clock, progress=False)
    msg = str(err.value)
    assert "UPDATE_FAILED" in msg
    assert "Failed to provision GPU capacity in region westeurope." in msg
    assert "llama-chat" in msg
    assert not isinstance(err.value, EndpointTimeoutError)


def test_server_refusal_is_a_config_error(api, w, clock):
    bad = EndpointSpec(
        name="llama-chat", entity_name=MODEL, entity_version=1, plan=ThroughputPlan(0, 990, 990)
    )  # the server's chunk is 980
    with pytest.raises(EndpointConfigError, match="multiple of 980"):
        create_or_update(w, bad, clock=clock, progress=False)


def test_model_units_plan_sends_provisioned_model_units(api, w, clock):
    s = EndpointSpec(
        name="gpt-oss",
        entity_name="system.ai.gpt-oss-120b",
        entity_version=1,
        plan=ModelUnitsPlan.from_chunks(50, 2),
    )
    create_or_update(w, s, clock=clock, progress=False)
    body = next(b for m, _, b in api.calls if m == "POST")
    assert body["config"]["served_entities"] == [
        {
            "name": "gpt-oss-120b-1",
            "entity_name": "system.ai.gpt-oss-120b",
            "entity_version": "1",
            "provisioned_model_units": 100,
        }
    ]


def test_gateway_and_tags_applied(api, w, clock):
    api.add_endpoint("llama-chat", version="1")
    gateway = GatewaySpec(
        usage_tracking=True,
        inference_table=InferenceTable("main", "serving", "llama_chat"),
        rate_limits=(RateLimit(calls=100), RateLimit(tokens=5000, key="user")),
    )
    ep = create_or_update(
        w, spec(tags={"team": "ml", "cost": "pt"}, ai_gateway=gateway), clock=clock, progress=False
    )
    put = [b for m, p, b in api.calls if m == "PUT" and p.endswith("/ai-gateway")]
    assert put == [
        {
            "usage_tracking_config": {"enabled": True},
            "inference_table_config": {
                "catalog_name": "main",
                "schema_name": "serving",
                "table_name_prefix": "llama_chat",
                "enabled": True,
            },
            "rate_limits": [
                {"calls": 100, "key": "endpoint", "renewal_period": "minute"},
                {"tokens": 5000, "key": "user", "renewal_period": "minute"},
            ],
        }
    ]
    assert {t.key: t.value for t in ep.tags} == {"team": "ml", "cost": "pt"}
    assert ep.ai_gateway.usage_tracking_config.enabled is True
    # Tags already there are not patched again.
    create_or_update(w, spec(tags={"team": "ml"}), clock=clock, progress=False)
    assert api.count("PATCH", "/tags") == 1


def test_moving_an_inference_table_disables_it_first(api, w, clock):
    api.add_endpoint("llama-chat", version="2")
    first = GatewaySpec(inference_table=InferenceTable("main", "serving", "a"))
    create_or_update(w, spec(ai_gateway=first), clock=clock, progress=False)
    second = GatewaySpec(inference_table=InferenceTable("main", "other", "a"))
    create_or_update(w, spec(ai_gateway=second), clock=clock, progress=False)
    puts = [b["inference_table_config"] for m, p, b in api.calls if p.endswith("/ai-gateway")]
    assert puts[1:] == [
        {"enabled": False},
        {"catalog_name": "main", "schema_name": "other", "table_name_prefix": "a", "enabled": True},
    ]


def test_traffic_split_between_two_versions(api, w, clock):
    canary = ServedEntitySpec(MODEL, 3, ThroughputPlan.from_chunks(980, 0, 1, True), name="canary")
    s = spec(
        version=2,
        served_entity_name="stable",
        additional_entities=(canary,),
        traffic={"stable": 90, "canary": 10},
    )
    ep = create_or_update(w, s, clock=clock, progress=False)
    body = next(b for m, _, b in api.calls if m == "POST")
    assert body["config"]["traffic_config"] == {
        "routes": [
            {"served_model_name": "stable", "traffic_percentage": 90},
            {"served_model_name": "canary", "traffic_percentage": 10},
        ]
    }
    assert {se.name for se in ep.config.served_entities} == {"stable", "canary"}


# ------------------------------------------------------------------------- waiting


def test_wait_requires_ready_not_only_not_updating(api, w, clock):
    api.add_endpoint("llama-chat")
    ep = api.endpoints["llama-chat"]
    ep["state"] = {"ready": "NOT_READY", "config_update": "NOT_UPDATING"}
    for se in ep["config"]["served_entities"]:
        se["state"] = {
            "deployment": "DEPLOYMENT_RECOVERING",
            "deployment_state_message": "Scaling up.",
        }
    # The SDK's own waiter returns at once: NOT_UPDATING is all it checks.
    assert (
        w.serving_endpoints.wait_get_serving_endpoint_not_updating("llama-chat").state.ready.value
        == "NOT_READY"
    )

    polls = {"n": 0}
    real_do = api.do

    def do(method, path=None, **kw):
        if method == "GET":
            polls["n"] += 1
            if polls["n"] == 4:
                ep["state"]["ready"] = "READY"
        return real_do(method, path, **kw)

    api.do = do
    ready = wait_until_ready(w, "llama-chat", timeout=600, clock=clock, progress=False)
    assert ready.state.ready == EndpointStateReady.READY
    assert polls["n"] == 4


def test_timeout_names_the_last_state(w, api, clock):
    api.polls_to_ready = None  # never finishes
    api.add_endpoint("llama-chat", version="1", in_progress_polls=None)
    start = clock.time()
    with pytest.raises(EndpointTimeoutError) as err:
        wait_until_ready(
            w, "llama-chat", timeout=120, clock=clock, poll_interval=10, progress=False
        )
    msg = str(err.value)
    assert "'llama-chat'" in msg
    assert "config_update=IN_PROGRESS" in msg
    assert "DEPLOYMENT_CREATING" in msg
    assert clock.time() - start == pytest.approx(120)
    assert max(clock.sleeps) == 10  # backoff capped at poll_interval
    assert isinstance(err.value, TimeoutError)
    assert err.value.last_endpoint.name == "llama-chat"


def test_create_or_update_timeout_bounds_the_whole_call(api, w, clock):
    api.polls_to_ready = None
    with pytest.raises(EndpointTimeoutError, match="IN_PROGRESS"):
        create_or_update(w, spec(), timeout=300, clock=clock, progress=False)
    assert api.count("POST") == 1


def test_served_entity_failing_for_good_fails_fast(api, w, clock):
    api.add_endpoint("llama-chat")
    ep = api.endpoints["llama-chat"]
    ep["state"] = {"ready": "NOT_READY", "config_update": "NOT_UPDATING"}
    ep["config"]["served_entities"][0]["state"] = {
        "deployment": "DEPLOYMENT_FAILED",
        "deployment_state_message": "Container crashed: out of memory.",
    }
    with pytest.raises(EndpointError, match="Container crashed: out of memory"):
        wait_until_ready(w, "llama-chat", timeout=600, clock=clock, progress=False)
    assert clock.sleeps == []


def test_progress_shows_the_state(api, w, clock, capsys):
    create_or_update(w, spec(), clock=clock, progress=True)
    err = capsys.readouterr().err
    assert "llama-chat" in err
    assert "config_update=IN_PROGRESS" in err


def test_progress_callback_gets_every_polled_state_and_no_bar_is_drawn(api, w, clock, capsys):
    seen = []
    create_or_update(w, spec(), clock=clock, progress=seen.append)
    states = [describe_state(ep) for ep in seen]
    assert "config_update=IN_PROGRESS" in states[0]
    assert states[-1].startswith("ready=READY config_update=NOT_UPDATING")
    assert "llama-chat" not in capsys.readouterr().err  # the caller draws, not the library


# ------------------------------------------------------------------- get / delete


def test_get_unknown_endpoint(w):
    with pytest.raises(EndpointNotFoundError) as err:
        get_endpoint(w, "nope")
    assert "'nope' does not exist" in str(err.value)
    assert "adb-1234.5.azuredatabricks.net" in str(err.value)


def test_delete(api, w):
    api.add_endpoint("llama-chat")
    assert delete_endpoint(w, "llama-chat") is True
    assert "llama-chat" not in api.endpoints
    assert delete_endpoint(w, "llama-chat") is False  # missing_ok by default
    with pytest.raises(EndpointNotFoundError, match="'llama-chat'"):
        delete_endpoint(w, "llama-chat", missing_ok=False)


# ---------------------------------------------------------------------- validation


@pytest.mark.parametrize("name", ["a", "llama-3_chat", "A" * 63, "0start"])
def test_valid_endpoint_names(name):
    assert check_endpoint_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "a" * 64, "has space", "dot.name", "-leading", "_leading", "ünïcode", "a/b", None, 12],
)
def test_invalid_endpoint_names_refused_before_any_call(api, w, name):
    with pytest.raises(EndpointConfigError) as err:
        get_endpoint(w, name)
    assert repr(name) in str(err.value)
    assert "letters, digits" in str(err.value)
    assert isinstance(err.value, ValueError)
    assert api.calls == []


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"entity_version": 0}, "entity_version=0"),
        ({"entity_version": "latest"}, "entity_version='latest'"),
        ({"entity_name": ""}, "entity_name=''"),
        ({"served_entity_name": "bad name"}, "served entity name='bad name'"),
        ({"traffic": {"other": 100}}, "does not serve"),
        ({"traffic": {"llama_chat-1": 50}}, "sums to 50%"),
        ({"tags": {"team": 3}}, "tag 'team'=3"),
        ({"tags": {"": "x"}}, "tag key ''"),
        ({"plan": {"min": 980}}, "not a ThroughputPlan"),
        ({"name": "bad.name"}, "endpoint name='bad.name'"),
    ],
)
def test_spec_refusals(kwargs, fragment):
    base = {
        "name": "llama-chat",
        "entity_name": MODEL,
        "entity_version": 1,
        "plan": ThroughputPlan.from_chunks(980, 1, 2),
    }
    with pytest.raises(EndpointConfigError, match=fragment.replace("[", r"\[")):
        EndpointSpec(**{**base, **kwargs})


def test_several_entities_need_traffic_and_unique_names():
    plan = ThroughputPlan.from_chunks(980, 1, 2)
    with pytest.raises(EndpointConfigError, match="give traffic="):
        spec(additional_entities=(ServedEntitySpec(MODEL, 3, plan),))
    with pytest.raises(EndpointConfigError, match="more than once"):
        spec(
            version=3,
            additional_entities=(ServedEntitySpec(MODEL, 3, plan),),
            traffic={"llama_chat-3": 100},
        )


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({}, "neither calls nor tokens"),
        ({"calls": 0}, "calls=0"),
        ({"calls": 5, "key": "everyone"}, "key='everyone'"),
        ({"calls": 5, "principal": "a@b.c"}, "principal='a@b.c' needs key"),
        ({"calls": 5, "key": "user_group"}, "needs principal"),
    ],
)
def test_rate_limit_refusals(kwargs, fragment):
    with pytest.raises(EndpointConfigError, match=fragment):
        RateLimit(**kwargs)


def test_inference_table_refuses_dotted_names():
    with pytest.raises(EndpointConfigError, match="inference_table.schema_name='a.b'"):
        InferenceTable("main", "a.b")
