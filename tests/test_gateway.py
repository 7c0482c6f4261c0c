"""AI Gateway, tags and canary from a template's parameters, through the local workspace's
app in-process (databricks-sdk, as a notebook does): bad input refused naming the
parameter, usage and inference-table rows recorded and read back, a canary split and its
promotion."""

from __future__ import annotations

import json
from typing import Any

import fakes
import pytest
from databricks.sdk.errors import BadRequest, NotFound
from fakes import Catalog, ReadyWorker
from ptdeploy.errors import ParameterError, PromotionError
from ptdeploy.models import registry
from ptdeploy.names import USAGE_TABLE
from ptdeploy.serving import gateway, inference_tables
from ptdeploy.serving.endpoints import EndpointSpec, GatewaySpec, InferenceTable, create_or_update
from ptdeploy.serving.throughput import ThroughputPlan
from ptdeploy.templates import flow, specs
from ptdeploy.templates.parameters import Params

MODEL = "main.default.gw_model"


def _values(**overrides: Any) -> dict[str, Any]:
    values = {
        "model_source": "tiny-llama",
        "model_revision": "",
        "catalog": "main",
        "schema": "default",
        "model_name": "gw_model",
        "alias": "champion",
        "save_pretrained": True,
        "task": "llm/v1/completions",
        "endpoint_name": "gw",
        "min_chunks": 1,
        "max_chunks": 1,
        "scale_to_zero": False,
        "wait_timeout_minutes": 1,
        "prompt": "hi",
        "max_tokens": 4,
        "expect": "",
        "teardown": False,
        **fakes.GATEWAY_OFF,
        "target": "local",
        "steps": "all",
    }
    return {**values, **overrides}


def _params(**overrides: Any) -> Params:
    spec = specs.LLAMA_COMPLETIONS
    return Params(spec, spec.validate(_values(**overrides)), "python")


# ------------------------------------------------------------------ parameters


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("canary_percent", "100", "1 to 99 percent"),
        ("canary_percent", "-5", "1 to 99 percent"),
        ("rate_limit_calls_per_minute", "0", "must be >= 1"),
        ("rate_limit_calls_per_minute", "-3", "must be >= 1"),
        ("tags", "team", "not key=value"),
        ("tags", "a=1,a=2", "appears twice"),
        ("inference_table_catalog", "My.Cat", "may not contain periods"),
    ],
)
def test_bad_gateway_values_are_refused_naming_the_parameter(name, value, reason):
    with pytest.raises(ParameterError, match=f"parameter '{name}'.*{reason}"):
        specs.LLAMA_COMPLETIONS.validate(_values(**{name: value}))


def test_an_inference_table_needs_catalog_and_schema():
    with pytest.raises(ParameterError, match="'inference_table_catalog'.*'inference_table_schema'"):
        specs.LLAMA_COMPLETIONS.validate(_values(inference_table_catalog="main"))


def test_every_deployment_template_declares_the_gateway_parameters():
    for spec in specs.SPECS.values():
        if "steps" in spec.names:
            assert {p.name for p in specs.GATEWAY} <= set(spec.names), spec.notebook


def test_parameters_become_the_gateway_tags_and_traffic_share():
    p = _params(
        usage_tracking="true",
        inference_table_catalog="main",
        inference_table_schema="logs",
        rate_limit_calls_per_minute="120",
        tags="team=ml, cost_center=42",
        canary_percent="10",
    )
    spec = gateway.gateway_spec(p)
    assert spec is not None and spec.usage_tracking
    assert spec.inference_table == InferenceTable("main", "logs", None)
    assert [(r.calls, r.key) for r in spec.rate_limits] == [(120, "endpoint")]
    assert gateway.tags(p) == {"team": "ml", "cost_center": "42"}
    assert gateway.canary_percent(p) == 10
    assert gateway.payload_table_name(p) == "main.logs.gw_payload"
    assert gateway.gateway_spec(_params()) is None, "nothing set: the gateway is left alone"


# ------------------------------------------------------------------ local workspace


class KnownCatalogs(Catalog):
    """The fake registry, with Unity Catalog catalogs ``main`` and ``system``."""

    def catalog_names(self) -> list[str]:
        return ["main", "system"]

    def catalog_exists(self, name: str) -> bool:
        return name in self.catalog_names()


class Answering(ReadyWorker):
    async def infer(self, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "object": "text_completion",
            "choices": [{"index": 0, "text": " Paris", "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
        }

    async def stream(self, body: dict[str, Any]):
        yield (0, " Par")
        yield (0, "is")
        yield await self.infer(body)


@pytest.fixture
def w(local_client, tmp_path, monkeypatch):
    monkeypatch.setenv("PTDEPLOY_HOME", str(tmp_path))  # the tables the reader looks at
    return local_client(Answering, KnownCatalogs())


def _plan() -> ThroughputPlan:
    return ThroughputPlan(20, 20, 20)


def test_usage_and_inference_table_rows_are_recorded_and_read_back(w, tmp_path):
    table = InferenceTable("main", "default", "gw")
    spec = EndpointSpec(
        name="gw",
        entity_name=MODEL,
        entity_version="1",
        plan=_plan(),
        ai_gateway=GatewaySpec(usage_tracking=True, inference_table=table),
    )
    create_or_update(w, spec, timeout=30, progress=False)
    w.api_client.do("POST", "/serving-endpoints/gw/invocations", body={"prompt": "capital?"})
    streamed = w.api_client.do(
        "POST",
        "/serving-endpoints/gw/invocations",
        body={"prompt": "again", "stream": True},
        raw=True,
    )
    streamed["contents"].read()
    with pytest.raises(BadRequest):  # a refused request is logged with its status too
        w.api_client.do("POST", "/serving-endpoints/gw/invocations", body={"messages": []})

    root = tmp_path / "tables"
    usage = [json.loads(x) for x in (root / f"{USAGE_TABLE}.jsonl").read_text().splitlines()]
    assert [u["status_code"] for u in usage] == [200, 200, 400]
    assert usage[0]["input_token_count"] == 5 and usage[0]["output_token_count"] == 2
    assert usage[0]["total_token_count"] == 7 and usage[0]["requester"]
    assert [u["request_streaming"] for u in usage] == [False, True, False]

    payload = [
        json.loads(x) for x in (root / "main.default.gw_payload.jsonl").read_text().splitlines()
    ]
    assert json.loads(payload[0]["request"]) == {"prompt": "capital?"}
    assert json.loads(payload[1]["response"])["choices"][0]["text"] == " Paris", "aggregated"
    assert payload[0]["served_entity_id"] == "gw_model-1"
    assert payload[0]["execution_duration_ms"] >= 0 and payload[2]["status_code"] == 400


def test_the_reader_returns_dataframes_of_the_local_tables(tmp_path, monkeypatch):
    from ptdeploy import state
    from ptdeploy.workspace.tables import GatewayTables

    monkeypatch.setenv("PTDEPLOY_HOME", str(tmp_path))
    tables = GatewayTables(state.workspace_dir())
    gw = {
        "usage_tracking_config": {"enabled": True},
        "inference_table_config": {"catalog_name": "main", "schema_name": "s", "enabled": True},
    }
    for endpoint in ("a", "b"):
        tables.record(
            endpoint=endpoint,
            gateway=gw,
            served_entity="m-1",
            request={"prompt": "x"},
            response={"usage": {"prompt_tokens": 1, "completion_tokens": 3}},
            status_code=200,
            request_time=1_700_000_000.0,
            duration_ms=12,
            requester="me@localhost",
            streaming=False,
        )
    usage = inference_tables.read_usage("a")
    assert list(usage["total_token_count"]) == [4] and list(usage["endpoint_name"]) == ["a"]
    payload = inference_tables.read_payload("main.s.b_payload")
    assert list(payload.columns[:4]) == list(inference_tables.PAYLOAD_COLUMNS[:4])
    assert payload.loc[0, "request_date"] == "2023-11-14"
    assert inference_tables.read_payload("main.s.none_payload").empty


def test_an_inference_table_in_a_missing_catalog_is_refused_nothing_changed(w):
    with pytest.raises(NotFound, match="Catalog 'nope' does not exist"):
        w.catalogs.get("nope")
    assert w.catalogs.get("main").name == "main"
    create_or_update(w, EndpointSpec("gw", MODEL, "1", _plan()), timeout=30, progress=False)
    with pytest.raises(BadRequest, match="catalog_name='nope'.*does not exist"):
        w.serving_endpoints.put_ai_gateway(
            "gw", inference_table_config=InferenceTable("nope", "s").to_sdk()
        )
    assert w.serving_endpoints.get("gw").ai_gateway is None, "nothing changed"
    with pytest.raises(ParameterError, match="parameter 'inference_table_catalog'='nope'"):
        gateway.check_inference_table_catalog(
            w, _params(inference_table_catalog="nope", inference_table_schema="s")
        )


# ------------------------------------------------------------------ canary


@pytest.fixture
def aliases(monkeypatch):
    """The registry's aliases, in memory (the endpoint side is the real app)."""
    table: dict[tuple[str, str], str] = {}
    monkeypatch.setattr(registry, "alias_version", lambda n, a: table.get((n, a)))
    monkeypatch.setattr(registry, "set_alias", lambda n, a, v: table.__setitem__((n, a), str(v)))
    return table


def _registered(version: str) -> registry.RegisteredVersion:
    return registry.RegisteredVersion(
        MODEL, version, "challenger", f"models:/{MODEL}/{version}", ""
    )


def test_a_canary_splits_traffic_then_promotion_moves_all_of_it(w, aliases):
    p = _params()
    flow.deploy(p, w, _registered("1"))
    flow.promote(p, w, _registered("1"))
    assert aliases[(MODEL, "champion")] == "1"

    canary = _params(canary_percent="10", tags="team=ml")
    deployment = flow.deploy(canary, w, _registered("2"))
    assert sorted(deployment.served_versions) == ["1", "2"]
    assert flow.traffic(w, "gw") == {"gw_model-2": 10, "gw_model-1": 90}
    routed = [
        w.api_client.do(
            "POST",
            "/serving-endpoints/gw/invocations",
            body={"prompt": "x"},
            response_headers=["served-model-name"],
        )["served-model-name"]
        for _ in range(100)
    ]
    assert routed.count("gw_model-2") == 10 and routed.count("gw_model-1") == 90
    assert aliases[(MODEL, "champion")] == "1", "the champion moves only when promoted"

    flow.promote(canary, w, _registered("2"))
    assert flow.served_versions(w, "gw") == ["2"]
    assert flow.traffic(w, "gw") == {"gw_model-2": 100}
    assert aliases[(MODEL, "champion")] == "2"
    assert {t.key: t.value for t in w.serving_endpoints.get("gw").tags}["team"] == "ml"


def test_a_canary_without_a_champion_is_refused_before_anything_changes(w, aliases):
    with pytest.raises(
        ParameterError, match="parameter 'canary_percent'=10.*alias 'champion' gives no previous"
    ):
        flow.deploy(_params(canary_percent="10"), w, _registered("1"))
    assert flow.served_versions(w, "gw") == [], "no endpoint was created"
    aliases[(MODEL, "champion")] = "1"
    with pytest.raises(ParameterError, match="the one being deployed"):
        flow.deploy(_params(canary_percent="10"), w, _registered("1"))


def test_promoting_a_version_the_endpoint_does_not_serve_is_refused(w, aliases):
    flow.deploy(_params(), w, _registered("1"))
    with pytest.raises(PromotionError, match="not READY on it"):
        flow.promote(_params(), w, _registered("3"))
    assert (MODEL, "champion") not in aliases
