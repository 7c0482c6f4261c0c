"""A careless or hostile client: every malformed request gets a clean 4xx, and changes nothing.

Table-driven: each case is one request to one route (bodies, paths, query strings,
headers, content types, encodings, sizes) with the status, Databricks ``error_code`` and
a word of the message (the field at fault) it must get; after each one the endpoint list
and every endpoint's answer are exactly what they were. The app runs in-process with
workers that validate requests as the real ones do (``parse_request``, in the server
process) and answer without a model, so the sweep is in the quick loop.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi.testclient import TestClient
from ptdeploy import limits
from ptdeploy.errors import ModelVersionNotFoundError
from ptdeploy.workspace import store as st
from ptdeploy.workspace.app import create_app
from ptdeploy.workspace.manager import stop_all
from ptdeploy.workspace.optimization_info import ModelDescription
from ptdeploy.workspace.schemas import parse_request

TOKEN = "sweep-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BASE = "/api/2.0/serving-endpoints"
OPT = f"{BASE}/get-model-optimization-info"
CHUNK = 20
MB = 1024 * 1024


class ValidatingWorker:
    """Ready at once; validates each request exactly as ``EntityWorker.infer`` does."""

    def __init__(self, entity: st.ServedEntity) -> None:
        self.entity, self.task, self.error = entity, entity.task, None
        self.state = "STOPPED"

    def start(self) -> None:
        self.state = "READY"

    def stop(self) -> None:
        self.state = "STOPPED"

    async def infer(self, body: dict[str, Any]) -> dict[str, Any]:
        parse_request(self.task, body)
        return {"object": "list", "data": [], "choices": []}

    async def stream(self, body: dict[str, Any]):
        parse_request(self.task, body)
        yield {"object": "text_completion", "choices": []}


class Catalog:
    def __init__(self) -> None:
        self.models: dict[tuple[str, str], ModelDescription] = {}
        for name, task, ok in (
            ("main.default.tiny", "llm/v1/completions", True),
            ("main.default.chat", "llm/v1/chat", True),
            ("main.default.emb", "llm/v1/embeddings", True),
            ("main.default.gpt2", "llm/v1/completions", False),
        ):
            self.models[(name, "1")] = ModelDescription(
                name=name,
                version="1",
                task=task,
                architecture="LlamaForCausalLM" if ok else "GPT2LMHeadModel",
                optimizable=ok,
                model_type="llama" if ok else None,
                throughput_chunk_size=CHUNK if ok else None,
                reason="" if ok else "architecture GPT2LMHeadModel is not supported",
            )

    def describe(self, name: str, version: str) -> ModelDescription:
        try:
            return self.models[(name, version)]
        except KeyError:
            raise ModelVersionNotFoundError(
                f"Model version {name}/{version} does not exist."
            ) from None


def served(model: str = "tiny", **extra: Any) -> dict[str, Any]:
    return {
        "entity_name": f"main.default.{model}",
        "entity_version": "1",
        "min_provisioned_throughput": 0,
        "max_provisioned_throughput": CHUNK,
        **extra,
    }


def create_body(entities: list[dict[str, Any]] | None = None, **top: Any) -> dict[str, Any]:
    entities = [served()] if entities is None else entities
    return {"name": "new-ep", "config": {"served_entities": entities}, **top}


@dataclass
class Case:
    id: str
    method: str
    path: str
    status: int
    code: str
    says: str  # a word the message must contain (the field at fault, or the limit)
    json: Any = None
    content: bytes | str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def route(self) -> str:
        p = self.path.split("?")[0]
        if p.startswith(OPT):
            return "GET get-model-optimization-info"
        for suffix in ("config", "ai-gateway", "tags", "rate-limits", "invocations"):
            if p.endswith("/" + suffix):
                return f"{self.method} …/{{name}}/{suffix}"
        if p in (BASE, BASE + "/"):
            return f"{self.method} {BASE}"
        if p.startswith("/serving-endpoints/") and p.count("/") == 2:
            return f"{self.method} {p} (OpenAI)"
        return f"{self.method} {BASE}/{{name}} (other paths)"


def C(id: str, method: str, path: str, status: int, code: str, says: str, **kw: Any) -> Case:
    return Case(id, method, path, status, code, says, **kw)


BAD = "INVALID_PARAMETER_VALUE"
MAL = "MALFORMED_REQUEST"
GONE = "RESOURCE_DOES_NOT_EXIST"
NOAPI = "ENDPOINT_NOT_FOUND"
DEEP = '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"
MANY_TAGS = [{"key": f"k{i}", "value": "v"} for i in range(limits.MAX_TAGS + 1)]

CASES = [
    # ---- create: bodies
    C("create-empty-body", "POST", BASE, 400, BAD, "name"),
    C("create-array", "POST", BASE, 400, MAL, "object", json=[]),
    C("create-string", "POST", BASE, 400, MAL, "object", json="x"),
    C("create-bad-json", "POST", BASE, 400, MAL, "JSON", content="{"),
    C("create-trailing-garbage", "POST", BASE, 400, MAL, "JSON", content='{"name": "x"} x'),
    C("create-deep-nesting", "POST", BASE, 400, MAL, "nested", content=DEEP),
    C("create-name-64", "POST", BASE, 400, BAD, "name", json=create_body(name="a" * 64)),
    C("create-name-space", "POST", BASE, 400, BAD, "name", json=create_body(name="a b")),
    C("create-name-dash-first", "POST", BASE, 400, BAD, "name", json=create_body(name="-ab")),
    C("create-name-dots", "POST", BASE, 400, BAD, "name", json=create_body(name="..")),
    C("create-name-slash", "POST", BASE, 400, BAD, "name", json=create_body(name="a/b")),
    C("create-name-int", "POST", BASE, 400, BAD, "name", json=create_body(name=123)),
    C("create-no-config", "POST", BASE, 400, BAD, "config", json={"name": "new-ep"}),
    C("create-config-list", "POST", BASE, 400, BAD, "config", json={"name": "x", "config": []}),
    C("create-no-entities", "POST", BASE, 400, BAD, "served_entities", json=create_body([])),
    C(
        "create-too-many-entities",
        "POST",
        BASE,
        400,
        BAD,
        "at most",
        json=create_body([served(name=f"e{i}") for i in range(limits.MAX_SERVED_ENTITIES + 1)]),
    ),
    C(
        "create-version-abc",
        "POST",
        BASE,
        400,
        BAD,
        "entity_version",
        json=create_body([served(entity_version="abc")]),
    ),
    C(
        "create-version-missing",
        "POST",
        BASE,
        400,
        BAD,
        "entity_version",
        json=create_body([{"entity_name": "main.default.tiny", "max_provisioned_throughput": 20}]),
    ),
    C(
        "create-entity-name-missing",
        "POST",
        BASE,
        400,
        BAD,
        "entity_name",
        json=create_body([{"entity_version": "1", "max_provisioned_throughput": 20}]),
    ),
    C(
        "create-unknown-model",
        "POST",
        BASE,
        400,
        BAD,
        "does not exist",
        json=create_body([served("nope")]),
    ),
    C(
        "create-not-multiple",
        "POST",
        BASE,
        400,
        BAD,
        "multiple",
        json=create_body([served(max_provisioned_throughput=25)]),
    ),
    C(
        "create-absurd-throughput",
        "POST",
        BASE,
        400,
        BAD,
        "max_provisioned_throughput",
        json=create_body([served(max_provisioned_throughput=CHUNK * 10**17)]),
    ),
    C(
        "create-min-over-max",
        "POST",
        BASE,
        400,
        BAD,
        "min_provisioned_throughput",
        json=create_body([served(min_provisioned_throughput=40)]),
    ),
    C(
        "create-negative",
        "POST",
        BASE,
        400,
        BAD,
        "negative",
        json=create_body([served(min_provisioned_throughput=-20)]),
    ),
    C(
        "create-max-zero",
        "POST",
        BASE,
        400,
        BAD,
        "max_provisioned_throughput",
        json=create_body([served(max_provisioned_throughput=0)]),
    ),
    C(
        "create-max-text",
        "POST",
        BASE,
        400,
        BAD,
        "max_provisioned_throughput",
        json=create_body([served(max_provisioned_throughput="lots")]),
    ),
    C(
        "create-max-float",
        "POST",
        BASE,
        400,
        BAD,
        "max_provisioned_throughput",
        json=create_body([served(max_provisioned_throughput=20.5)]),
    ),
    C(
        "create-not-optimizable",
        "POST",
        BASE,
        400,
        BAD,
        "not eligible",
        json=create_body([served("gpt2")]),
    ),
    C(
        "create-workload-size-bad",
        "POST",
        BASE,
        400,
        BAD,
        "workload_size",
        json=create_body(
            [{"entity_name": "main.default.gpt2", "entity_version": "1", "workload_size": "Huge"}]
        ),
    ),
    C(
        "create-size-and-throughput",
        "POST",
        BASE,
        400,
        BAD,
        "workload_size",
        json=create_body([served(workload_size="Small")]),
    ),
    C(
        "create-workload-type",
        "POST",
        BASE,
        400,
        BAD,
        "workload_type",
        json=create_body([served(workload_type="TPU")]),
    ),
    C(
        "create-too-many-env",
        "POST",
        BASE,
        400,
        BAD,
        "environment_vars",
        json=create_body([served(environment_vars={f"V{i}": "x" for i in range(31)})]),
    ),
    C(
        "create-env-not-strings",
        "POST",
        BASE,
        400,
        BAD,
        "environment_vars",
        json=create_body([served(environment_vars={"A": 1})]),
    ),
    C(
        "create-scale-to-zero-text",
        "POST",
        BASE,
        400,
        BAD,
        "scale_to_zero_enabled",
        json=create_body([served(scale_to_zero_enabled="maybe")]),
    ),
    C(
        "create-scale-to-zero-min",
        "POST",
        BASE,
        400,
        BAD,
        "scale_to_zero_enabled",
        json=create_body([served(scale_to_zero_enabled=True, min_provisioned_throughput=20)]),
    ),
    C(
        "create-external-model",
        "POST",
        BASE,
        400,
        BAD,
        "external_model",
        json=create_body([served(external_model={"name": "gpt-4"})]),
    ),
    C(
        "create-model-units",
        "POST",
        BASE,
        400,
        BAD,
        "provisioned_model_units",
        json=create_body([served(provisioned_model_units=50)]),
    ),
    C(
        "create-mixed-tasks",
        "POST",
        BASE,
        400,
        BAD,
        "same task",
        json=create_body([served(), served("chat")]),
    ),
    C(
        "create-duplicate-entity-names",
        "POST",
        BASE,
        400,
        BAD,
        "more than once",
        json=create_body([served(name="x"), served(name="x")]),
    ),
    C(
        "create-entity-name-bad",
        "POST",
        BASE,
        400,
        BAD,
        "name",
        json=create_body([served(name="a b")]),
    ),
    C("create-too-many-tags", "POST", BASE, 400, BAD, "tags", json=create_body(tags=MANY_TAGS)),
    C(
        "create-tag-key-long",
        "POST",
        BASE,
        400,
        BAD,
        "key",
        json=create_body(tags=[{"key": "k" * 256, "value": "v"}]),
    ),
    C(
        "create-tag-value-long",
        "POST",
        BASE,
        400,
        BAD,
        "value",
        json=create_body(tags=[{"key": "k", "value": "v" * 1001}]),
    ),
    C("create-tags-object", "POST", BASE, 400, BAD, "tags", json=create_body(tags={"k": "v"})),
    C(
        "create-routes-sum",
        "POST",
        BASE,
        400,
        BAD,
        "100",
        json={
            "name": "new-ep",
            "config": {
                "served_entities": [served(name="a")],
                "traffic_config": {
                    "routes": [{"served_entity_name": "a", "traffic_percentage": 90}]
                },
            },
        },
    ),
    C(
        "create-route-unknown",
        "POST",
        BASE,
        400,
        BAD,
        "served_entity_name",
        json={
            "name": "new-ep",
            "config": {
                "served_entities": [served(name="a")],
                "traffic_config": {
                    "routes": [{"served_entity_name": "b", "traffic_percentage": 100}]
                },
            },
        },
    ),
    C(
        "create-gateway-unknown",
        "POST",
        BASE,
        400,
        BAD,
        "unknown field",
        json=create_body(ai_gateway={"guardrail": {}}),
    ),
    C(
        "create-rate-limit-hour",
        "POST",
        BASE,
        400,
        BAD,
        "renewal_period",
        json=create_body(rate_limits=[{"calls": 5, "renewal_period": "hour"}]),
    ),
    C(
        "create-description-int",
        "POST",
        BASE,
        400,
        BAD,
        "description",
        json=create_body(description=5),
    ),
    C(
        "create-existing",
        "POST",
        BASE,
        409,
        "RESOURCE_ALREADY_EXISTS",
        "already exists",
        json=create_body(name="comp"),
    ),
    # ---- create: content types, encodings, sizes, query strings
    C(
        "create-form-encoded",
        "POST",
        BASE,
        400,
        MAL,
        "JSON",
        content="name=x&config=y",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ),
    C(
        "create-latin1",
        "POST",
        BASE,
        400,
        MAL,
        "UTF-8",
        content='{"name": "caf\xe9"}'.encode("latin-1"),
    ),
    C(
        "create-utf16",
        "POST",
        BASE,
        400,
        BAD,
        "name",
        content=json.dumps({"name": "a b"}).encode("utf-16"),
    ),
    C(
        "create-17mb",
        "POST",
        BASE,
        413,
        "BAD_REQUEST",
        "payload limit",
        content=b'{"name": "' + b"a" * (17 * MB) + b'"}',
    ),
    C("create-query-junk", "POST", BASE + "?%zz=%%&a", 400, BAD, "name", json={}),
    # ---- update config
    C("update-empty", "PUT", f"{BASE}/comp/config", 400, BAD, "served_entities", json={}),
    C(
        "update-version-abc",
        "PUT",
        f"{BASE}/comp/config",
        400,
        BAD,
        "entity_version",
        json={"served_entities": [served(entity_version="x")]},
    ),
    C(
        "update-task-change",
        "PUT",
        f"{BASE}/comp/config",
        400,
        BAD,
        "served_entities",
        json={"served_entities": [served("emb"), served()]},
    ),
    C(
        "update-route-unknown",
        "PUT",
        f"{BASE}/comp/config",
        400,
        BAD,
        "served_entity_name",
        json={
            "traffic_config": {"routes": [{"served_entity_name": "zzz", "traffic_percentage": 100}]}
        },
    ),
    C(
        "update-missing-endpoint",
        "PUT",
        f"{BASE}/nope/config",
        404,
        GONE,
        "nope",
        json={"served_entities": [served()]},
    ),
    C("update-bad-json", "PUT", f"{BASE}/comp/config", 400, MAL, "JSON", content="{]"),
    # ---- AI gateway
    C("gateway-array", "PUT", f"{BASE}/comp/ai-gateway", 400, MAL, "object", json=[1]),
    C(
        "gateway-calls-negative",
        "PUT",
        f"{BASE}/comp/ai-gateway",
        400,
        BAD,
        "calls",
        json={"rate_limits": [{"calls": -1, "renewal_period": "minute"}]},
    ),
    C(
        "gateway-usage-text",
        "PUT",
        f"{BASE}/comp/ai-gateway",
        400,
        BAD,
        "usage_tracking_config",
        json={"usage_tracking_config": "yes"},
    ),
    C(
        "gateway-enabled-text",
        "PUT",
        f"{BASE}/comp/ai-gateway",
        400,
        BAD,
        "enabled",
        json={"inference_table_config": {"enabled": "maybe"}},
    ),
    C("gateway-missing-endpoint", "PUT", f"{BASE}/nope/ai-gateway", 404, GONE, "nope", json={}),
    # ---- tags
    C(
        "tags-add-string",
        "PATCH",
        f"{BASE}/comp/tags",
        400,
        BAD,
        "add_tags",
        json={"add_tags": "x"},
    ),
    C(
        "tags-delete-ints",
        "PATCH",
        f"{BASE}/comp/tags",
        400,
        BAD,
        "delete_tags",
        json={"delete_tags": [1]},
    ),
    C(
        "tags-too-many",
        "PATCH",
        f"{BASE}/comp/tags",
        400,
        BAD,
        "tags",
        json={"add_tags": MANY_TAGS},
    ),
    C(
        "tags-key-empty",
        "PATCH",
        f"{BASE}/comp/tags",
        400,
        BAD,
        "add_tags",
        json={"add_tags": [{"key": "", "value": "v"}]},
    ),
    C(
        "tags-missing-endpoint",
        "PATCH",
        f"{BASE}/nope/tags",
        404,
        GONE,
        "nope",
        json={"add_tags": []},
    ),
    # ---- rate limits (deprecated route)
    C(
        "rate-limits-calls-text",
        "PUT",
        f"{BASE}/comp/rate-limits",
        400,
        BAD,
        "calls",
        json={"rate_limits": [{"calls": "x", "renewal_period": "minute"}]},
    ),
    C(
        "rate-limits-no-period",
        "PUT",
        f"{BASE}/comp/rate-limits",
        400,
        BAD,
        "renewal_period",
        json={"rate_limits": [{"calls": 1}]},
    ),
    # ---- get-model-optimization-info: paths
    C("opt-version-abc", "GET", f"{OPT}/main.default.tiny/abc", 400, BAD, "version"),
    C("opt-version-float", "GET", f"{OPT}/main.default.tiny/1.5", 400, BAD, "version"),
    C("opt-version-negative", "GET", f"{OPT}/main.default.tiny/-1", 400, BAD, "version"),
    C("opt-version-arabic-digit", "GET", f"{OPT}/main.default.tiny/%D9%A3", 400, BAD, "version"),
    C("opt-no-version", "GET", f"{OPT}/main.default.tiny", 400, BAD, "version"),
    C("opt-encoded-dotdot", "GET", f"{OPT}/..%2F..%2Fetc%2Fpasswd/1", 400, BAD, "name"),
    C("opt-encoded-slash", "GET", f"{OPT}/main.default.a%2Fb/1", 400, BAD, "name"),
    C("opt-empty-level", "GET", f"{OPT}/main..tiny/1", 400, BAD, "name"),
    C("opt-control-char", "GET", f"{OPT}/main.default.a%00b/1", 400, BAD, "name"),
    C("opt-unknown-model", "GET", f"{OPT}/main.default.nope/1", 404, GONE, "does not exist"),
    C(
        "opt-unknown-version",
        "GET",
        f"{OPT}/main.default.tiny/99999999999999999999",
        404,
        GONE,
        "does not exist",
    ),
    # ---- other paths and methods
    C("get-missing", "GET", f"{BASE}/nope", 404, GONE, "nope"),
    C("get-encoded-slash", "GET", f"{BASE}/a%2F..%2Fb", 404, NOAPI, "No API"),
    C("delete-missing", "DELETE", f"{BASE}/nope", 404, GONE, "nope"),
    C("post-on-endpoint", "POST", f"{BASE}/comp", 404, NOAPI, "No API", json={}),
    C("get-config", "GET", f"{BASE}/comp/config", 404, NOAPI, "No API"),
    C("get-invocations", "GET", "/serving-endpoints/comp/invocations", 404, NOAPI, "No API"),
    C("unknown-api", "GET", "/api/2.0/clusters/list", 404, NOAPI, "No API"),
    # ---- headers
    C("no-auth", "GET", BASE, 401, "UNAUTHENTICATED", "Credential", headers={"Authorization": ""}),
    C(
        "wrong-token",
        "GET",
        BASE,
        403,
        "PERMISSION_DENIED",
        "token",
        headers={"Authorization": "Bearer x"},
    ),
    C(
        "basic-auth",
        "GET",
        BASE,
        401,
        "UNAUTHENTICATED",
        "Credential",
        headers={"Authorization": "Basic eDp5"},
    ),
    C(
        "empty-bearer",
        "DELETE",
        f"{BASE}/comp",
        401,
        "UNAUTHENTICATED",
        "Credential",
        headers={"Authorization": "Bearer "},
    ),
    C(
        "wrong-token-on-create",
        "POST",
        BASE,
        403,
        "PERMISSION_DENIED",
        "token",
        json=create_body(),
        headers={"Authorization": "Bearer nope"},
    ),
    # ---- invocations
    C(
        "emb-too-many-inputs",
        "POST",
        "/serving-endpoints/emb/invocations",
        400,
        BAD,
        "input",
        json={"input": ["x"] * (limits.MAX_EMBEDDING_INPUTS + 1)},
    ),
    C(
        "emb-5mb",
        "POST",
        "/serving-endpoints/emb/invocations",
        413,
        "BAD_REQUEST",
        "4 MB",
        json={"input": ["x" * 1000] * 5000},
    ),
    C(
        "emb-input-int",
        "POST",
        "/serving-endpoints/emb/invocations",
        400,
        BAD,
        "input",
        json={"input": 5},
    ),
    C(
        "emb-unknown-field",
        "POST",
        "/serving-endpoints/emb/invocations",
        400,
        "BAD_REQUEST",
        "inputs",
        json={"input": "x", "inputs": 5},
    ),
    C(
        "emb-chat-body",
        "POST",
        "/serving-endpoints/emb/invocations",
        400,
        BAD,
        "messages",
        json={"messages": [{"role": "user", "content": "hi"}]},
    ),
    C(
        "comp-max-tokens-0",
        "POST",
        "/serving-endpoints/comp/invocations",
        400,
        BAD,
        "max_tokens",
        json={"prompt": "x", "max_tokens": 0},
    ),
    C(
        "comp-max-tokens-text",
        "POST",
        "/serving-endpoints/comp/invocations",
        400,
        BAD,
        "max_tokens",
        json={"prompt": "x", "max_tokens": "10"},
    ),
    C(
        "comp-n-too-big",
        "POST",
        "/serving-endpoints/comp/invocations",
        400,
        BAD,
        "n",
        json={"prompt": "x", "n": limits.MAX_N + 1},
    ),
    C(
        "comp-temperature",
        "POST",
        "/serving-endpoints/comp/invocations",
        400,
        BAD,
        "temperature",
        json={"prompt": "x", "temperature": 3},
    ),
    C(
        "comp-stream",
        "POST",
        "/serving-endpoints/comp/invocations",
        400,
        BAD,
        "stream",
        json={"prompt": "x", "stream": "yes"},
    ),
    C(
        "comp-too-many-prompts",
        "POST",
        "/serving-endpoints/comp/invocations",
        400,
        BAD,
        "prompt",
        json={"prompt": ["x"] * (limits.MAX_PROMPTS + 1)},
    ),
    C(
        "comp-params-string",
        "POST",
        "/serving-endpoints/comp/invocations",
        400,
        BAD,
        "params",
        json={"prompt": "x", "params": "x"},
    ),
    C(
        "comp-records-empty",
        "POST",
        "/serving-endpoints/comp/invocations",
        400,
        BAD,
        "dataframe_records",
        json={"dataframe_records": []},
    ),
    C(
        "comp-split-bad",
        "POST",
        "/serving-endpoints/comp/invocations",
        400,
        BAD,
        "dataframe_split",
        json={"dataframe_split": {"columns": "prompt"}},
    ),
    C(
        "comp-bad-json",
        "POST",
        "/serving-endpoints/comp/invocations?x=%ff",
        400,
        MAL,
        "JSON",
        content="{'prompt': 'x'}",
    ),
    C(
        "chat-bad-role",
        "POST",
        "/serving-endpoints/chat/invocations",
        400,
        BAD,
        "role",
        json={"messages": [{"role": "robot", "content": "hi"}]},
    ),
    C(
        "chat-top-logprobs",
        "POST",
        "/serving-endpoints/chat/invocations",
        400,
        BAD,
        "top_logprobs",
        json={
            "messages": [{"role": "user", "content": "hi"}],
            "logprobs": True,
            "top_logprobs": 21,
        },
    ),
    C(
        "invoke-missing",
        "POST",
        "/serving-endpoints/nope/invocations",
        404,
        GONE,
        "nope",
        json={"prompt": "x"},
    ),
    # ---- OpenAI routes
    C(
        "openai-no-model",
        "POST",
        "/serving-endpoints/embeddings",
        400,
        BAD,
        "model",
        json={"input": "x"},
    ),
    C(
        "openai-model-int",
        "POST",
        "/serving-endpoints/embeddings",
        400,
        BAD,
        "model",
        json={"model": 5, "input": "x"},
    ),
    C(
        "openai-wrong-task",
        "POST",
        "/serving-endpoints/chat/completions",
        400,
        BAD,
        "llm/v1/embeddings",
        json={"model": "emb", "messages": [{"role": "user", "content": "hi"}]},
    ),
    C(
        "openai-missing",
        "POST",
        "/serving-endpoints/completions",
        404,
        GONE,
        "nope",
        json={"model": "nope", "prompt": "x"},
    ),
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    app = create_app(
        token=TOKEN,
        store=st.EndpointStore(tmp_path_factory.mktemp("sweep") / "endpoints"),
        catalog=Catalog(),
        worker_factory=ValidatingWorker,
        poll_interval=3600,  # the test settles states itself
    )
    with TestClient(app, headers=AUTH) as client:
        for name, model in (("comp", "tiny"), ("chat", "chat"), ("emb", "emb")):
            body = {"name": name, "config": {"served_entities": [served(model)]}}
            body["tags"] = [{"key": "team", "value": "ml"}]
            assert client.post(BASE, json=body).status_code == 200
        stop_all(app.state.manager.reconcile())
        yield client


def snapshot(client: TestClient) -> dict[str, Any]:
    listed = client.get(BASE).json()
    return {
        "list": listed,
        "endpoints": {
            e["name"]: client.get(f"{BASE}/{e['name']}").json() for e in listed["endpoints"]
        },
    }


def test_the_sweep_covers_every_route_with_at_least_60_requests():
    routes = Counter(c.route for c in CASES)
    assert len(CASES) >= 60
    for route in (
        f"POST {BASE}",
        "PUT …/{name}/config",
        "PUT …/{name}/ai-gateway",
        "PATCH …/{name}/tags",
        "PUT …/{name}/rate-limits",
        "GET get-model-optimization-info",
        "POST …/{name}/invocations",
        "POST /serving-endpoints/embeddings (OpenAI)",
        "POST /serving-endpoints/completions (OpenAI)",
    ):
        assert routes[route] >= 1, route
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_request_gets_a_clean_4xx_and_changes_nothing(workspace, case, caplog):
    before = snapshot(workspace)
    headers = {**AUTH, **case.headers}
    if not headers.get("Authorization"):
        headers.pop("Authorization", None)
        workspace.headers.pop("Authorization", None)
    try:
        resp = workspace.request(
            case.method, case.path, json=case.json, content=case.content, headers=headers
        )
    finally:
        workspace.headers.update(AUTH)
    assert resp.status_code == case.status, resp.text[:500]
    body = resp.json()
    assert set(body) == {"error_code", "message"}, body
    assert body["error_code"] == case.code, body
    assert case.says.lower() in body["message"].lower(), body["message"][:500]
    assert "Traceback" not in body["message"]
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert snapshot(workspace) == before
