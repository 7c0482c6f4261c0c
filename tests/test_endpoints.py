"""create_or_update / wait_until_ready / get / delete against the local workspace's app.

The app is the real one (routes, validation, state machine, rendering through the SDK's
own types), served in-process (``local_client``) and driven through ``databricks-sdk``'s
``WorkspaceClient`` exactly as a user's code drives Databricks. Only the workers are fake
(``fakes.LoadingWorker``): each loads after ``polls_to_ready`` GETs of the endpoint, or
fails with ``fail_message``, moved by the request log's hook (``fakes.RequestLog``), which
also keeps every request body and answer status the client caused. The app answers a GET
with the endpoint's current state, so poll counts are exact. Time is a ``FakeClock``: a
real sleep in the client fails the test.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import fakes
import pytest
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
from ptdeploy.workspace.manager import HealingPolicy

API = "/api/2.0/serving-endpoints"
MODEL = "main.default.llama_chat"
CHUNK = 980  # Databricks' throughput chunk for Llama 3 8B (get-model-optimization-info)
GPT_OSS = "system.ai.gpt-oss-120b"  # provisioned in model units


class Serving:
    """The local workspace behind the client under test (``w``), and the knobs a test turns.

    A deployment loads after ``polls_to_ready`` GETs of an endpoint (None: never) or, with
    ``fail_message`` set, fails with it. ``before_create`` / ``before_update`` run once,
    just before the client's next create / config update reaches the app (another client
    racing it). ``log`` holds the requests the client sent.
    """

    def __init__(self, local_client, healing: HealingPolicy | None = None) -> None:
        self.workers = fakes.Workers()
        catalog = fakes.Catalog(chunk=CHUNK, model_units={GPT_OSS: 50})
        options = {"healing": healing} if healing else {}
        self.w = local_client(self.workers, catalog, wrap=self._wrap, **options)
        self.reset()

    def reset(self) -> None:
        """No endpoint, default knobs, an empty log: what each test starts from."""
        self.fail_message: str | None = None
        self.before_create: Callable[[], object] | None = None
        self.before_update: Callable[[], object] | None = None
        self.on_get: Callable[[], object] | None = None
        with self.log.quiet():
            for name in self.names():
                self.w.serving_endpoints.delete(name)
        self.workers.made.clear()
        self.workers.polls_to_ready = 2
        self.log.calls.clear()
        self.log.requests.clear()

    @property
    def polls_to_ready(self) -> int | None:
        return self.workers.polls_to_ready

    @polls_to_ready.setter
    def polls_to_ready(self, polls: int | None) -> None:
        self.workers.polls_to_ready = polls

    def _wrap(self, app):
        self.log = fakes.RequestLog(app, before=self._before)
        return self.log

    def _before(self, call: fakes.Call) -> None:
        parts = call.path[len(API) :].strip("/").split("/") if call.path.startswith(API) else []
        if call.method == "POST" and parts == [""] and self.before_create:
            hook, self.before_create = self.before_create, None
            hook()
        elif call.method == "PUT" and parts[1:] == ["config"] and self.before_update:
            hook, self.before_update = self.before_update, None
            hook()
        elif call.method == "GET" and len(parts) == 1 and parts[0]:
            self.workers.poll(fail_with=self.fail_message)
            if self.on_get:
                self.on_get()

    # ------------------------------------------------ state set up by "someone else"
    def add_endpoint(self, name: str, version: str = "1", *, in_progress_polls: int | None = 0):
        """An endpoint serving MODEL ``version``, READY; with ``in_progress_polls`` != 0 an
        update someone else started is IN_PROGRESS, for that many GETs (None: never ends)."""
        with self.log.quiet():
            body = {"name": name, "config": {"served_entities": [self._entity(version)]}}
            self.w.api_client.do("POST", API, body=body)
            for worker in self.workers.loading():
                worker.load()
            assert self.w.serving_endpoints.get(name).state.ready == EndpointStateReady.READY
            if in_progress_polls != 0:
                self.start_update(name, version, polls=in_progress_polls)

    def start_update(self, name: str, version: str = "1", *, polls: int | None = 1) -> None:
        """Someone else's config update, redeploying ``version`` (under another served
        entity name, so it loads anew), IN_PROGRESS for ``polls`` GETs."""
        with self.log.quiet():
            saved, self.polls_to_ready = self.polls_to_ready, polls
            try:
                entity = self._entity(version) | {"name": f"llama_chat-{version}-redeploy"}
                self.w.api_client.do(
                    "PUT", f"{API}/{name}/config", body={"served_entities": [entity]}
                )
            finally:
                self.polls_to_ready = saved

    @staticmethod
    def _entity(version: str) -> dict:
        return {
            "name": f"llama_chat-{version}",
            "entity_name": MODEL,
            "entity_version": version,
            "min_provisioned_throughput": CHUNK,
            "max_provisioned_throughput": 2 * CHUNK,
            "scale_to_zero_enabled": False,
        }

    def names(self) -> list[str]:
        with self.log.quiet():
            return [e.name for e in self.w.serving_endpoints.list()]


@pytest.fixture(scope="module")
def _serving(module_local_client):
    # one app for the module (starting a server costs ~0.4 s); each test starts empty
    return Serving(module_local_client)


@pytest.fixture
def api(_serving):
    _serving.reset()
    return _serving


@pytest.fixture
def w(api):
    return api.w


@pytest.fixture
def clock(monkeypatch):
    # A real sleep in the client under test (this thread) would be a bug: make it loud.
    # The in-process server's own threads keep real time.
    real_sleep, client_thread = time.sleep, threading.current_thread()

    def sleep(seconds: float) -> None:
        if threading.current_thread() is client_thread:
            pytest.fail(f"time.sleep({seconds}) called")
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", sleep)
    return FakeClock()


def spec(version=2, **kwargs) -> EndpointSpec:
    return EndpointSpec(
        name="llama-chat",
        entity_name=MODEL,
        entity_version=version,
        plan=ThroughputPlan.from_chunks(CHUNK, 1, 2),
        **kwargs,
    )


# ------------------------------------------------------------------ create / update


def test_creates_when_absent(api, w, clock):
    ep = create_or_update(w, spec(tags={"team": "ml"}), clock=clock, progress=False)
    assert api.log.count("POST") == 1 and api.log.count("PUT", "/config") == 0
    [body] = api.log.bodies("POST")
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
    assert api.log.count("POST") == 0
    assert api.log.count("PUT", "/config") == 1
    assert api.names() == ["llama-chat"]
    assert [se.entity_version for se in ep.config.served_entities] == ["2"]
    assert ep.config.config_version == 2


def test_running_twice_changes_nothing_the_second_time(api, w, clock):
    create_or_update(w, spec(), clock=clock, progress=False)
    log = api.log
    before = (log.count("POST"), log.count("PUT"), log.count("PATCH"))
    ep = create_or_update(w, spec(), clock=clock, progress=False)
    assert (log.count("POST"), log.count("PUT"), log.count("PATCH")) == before
    assert ep.config.config_version == 1
    # ... unless asked to redeploy anyway
    create_or_update(w, spec(), clock=clock, progress=False, force_update=True)
    assert log.count("PUT", "/config") == 1


def test_update_waits_out_an_update_in_progress(api, w, clock):
    api.add_endpoint("llama-chat", version="1", in_progress_polls=3)
    # The app answers 409 to a config update while one is IN_PROGRESS: none was answered.
    ep = create_or_update(w, spec(version=2), clock=clock, progress=False)
    assert api.log.count("PUT", "/config", status=409) == 0
    put_index = next(i for i, c in enumerate(api.log.calls) if c.method == "PUT")
    gets_before = [c for c in api.log.calls[:put_index] if c.method == "GET"]
    assert len(gets_before) >= 4
    assert [se.entity_version for se in ep.config.served_entities] == ["2"]


def test_concurrent_create_409_falls_back_to_update(api, w, clock):
    # Someone else creates the endpoint between our GET (404) and our POST.
    api.before_create = lambda: api.add_endpoint("llama-chat", version="1", in_progress_polls=1)
    ep = create_or_update(w, spec(version=2), clock=clock, progress=False)
    assert api.log.count("POST") == 1  # the create that lost the race
    assert api.log.count("POST", status=409) == 1  # RESOURCE_ALREADY_EXISTS
    assert api.log.count("PUT", "/config") == 1  # then an update, no crash
    assert api.names() == ["llama-chat"]
    assert [se.entity_version for se in ep.config.served_entities] == ["2"]


def test_update_racing_another_update_is_retried(api, w, clock):
    api.add_endpoint("llama-chat", version="1")
    # Someone else's update starts just before ours reaches the workspace.
    api.before_update = lambda: api.start_update("llama-chat", polls=1)
    ep = create_or_update(w, spec(version=3), clock=clock, progress=False)
    assert api.log.count("PUT", "/config") == 2
    assert api.log.count("PUT", "/config", status=409) == 1  # RESOURCE_CONFLICT
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
    assert api.log.count("POST", status=400) == 1
    assert api.names() == []  # nothing half created


def test_model_units_plan_sends_provisioned_model_units(api, w, clock):
    s = EndpointSpec(
        name="gpt-oss",
        entity_name=GPT_OSS,
        entity_version=1,
        plan=ModelUnitsPlan.from_chunks(50, 2),
    )
    ep = create_or_update(w, s, clock=clock, progress=False)
    [body] = api.log.bodies("POST")
    assert body["config"]["served_entities"] == [
        {
            "name": "gpt-oss-120b-1",
            "entity_name": GPT_OSS,
            "entity_version": "1",
            "provisioned_model_units": 100,
        }
    ]
    assert ep.config.served_entities[0].provisioned_model_units == 100


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
    assert api.log.bodies("PUT", "/ai-gateway") == [
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
    assert api.log.count("PATCH", "/tags") == 1


def test_moving_an_inference_table_disables_it_first(api, w, clock):
    api.add_endpoint("llama-chat", version="2")
    first = GatewaySpec(inference_table=InferenceTable("main", "serving", "a"))
    create_or_update(w, spec(ai_gateway=first), clock=clock, progress=False)
    second = GatewaySpec(inference_table=InferenceTable("main", "other", "a"))
    create_or_update(w, spec(ai_gateway=second), clock=clock, progress=False)
    puts = [b["inference_table_config"] for b in api.log.bodies("PUT", "/ai-gateway")]
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
    [body] = api.log.bodies("POST")
    assert body["config"]["traffic_config"] == {
        "routes": [
            {"served_model_name": "stable", "traffic_percentage": 90},
            {"served_model_name": "canary", "traffic_percentage": 10},
        ]
    }
    assert {se.name for se in ep.config.served_entities} == {"stable", "canary"}


# ------------------------------------------------------------------------- waiting


def test_wait_requires_ready_not_only_not_updating(local_client, clock):
    # A READY endpoint whose worker dies: the workspace restarts it at once (no backoff),
    # and until the new worker has loaded the endpoint is NOT_READY but NOT_UPDATING, its
    # served entity DEPLOYMENT_RECOVERING (the healing path).
    api = Serving(local_client, healing=HealingPolicy(backoff_s=0.0))
    w = api.w
    api.add_endpoint("llama-chat")
    api.polls_to_ready = None  # the restarted worker loads when this test says
    [worker] = api.workers.made
    worker.fail("The worker process died (exit code -9).")
    # The SDK's own waiter returns at once: NOT_UPDATING is all it checks.
    ep = w.serving_endpoints.wait_get_serving_endpoint_not_updating("llama-chat")
    assert ep.state.ready.value == "NOT_READY"
    assert ep.config.served_entities[0].state.deployment.value == "DEPLOYMENT_RECOVERING"

    polls = {"n": 0}

    def on_get():
        polls["n"] += 1
        if polls["n"] == 4:
            for restarted in api.workers.loading():
                restarted.load()

    api.on_get = on_get
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
    assert api.log.count("POST") == 1


def test_served_entity_failing_for_good_fails_fast(local_client, clock):
    # A READY endpoint whose worker dies with no restart left: healing gives up, the
    # endpoint is NOT_READY / NOT_UPDATING with its served entity DEPLOYMENT_FAILED.
    api = Serving(local_client, healing=HealingPolicy(max_restarts=0))
    api.add_endpoint("llama-chat")
    [worker] = api.workers.made
    worker.fail("Container crashed: out of memory.")
    with pytest.raises(EndpointError, match="Container crashed: out of memory"):
        wait_until_ready(api.w, "llama-chat", timeout=600, clock=clock, progress=False)
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
    assert w.config.host in str(err.value)  # names the workspace it looked in


def test_delete(api, w):
    api.add_endpoint("llama-chat")
    assert delete_endpoint(w, "llama-chat") is True
    assert "llama-chat" not in api.names()
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
    assert api.log.calls == []


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
