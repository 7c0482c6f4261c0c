"""The local workspace with real clients, real workers and the real registry.

What a user runs against Databricks must run here unchanged: ``WorkspaceClient`` (create,
update, query, errors), ``mlflow.deployments.get_deploy_client("databricks")``, plain
``requests`` calls shaped like the documentation page, and the ``openai`` client. One
server for the module and three endpoints (tiny-llama completions, tiny-llama chat,
all-MiniLM embeddings): every worker process costs seconds of imports on 2 cores.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import requests
from databricks.sdk import WorkspaceClient
from databricks.sdk.errors import (
    BadRequest,
    InvalidParameterValue,
    NotFound,
    PermissionDenied,
    ResourceAlreadyExists,
    ResourceConflict,
    ResourceDoesNotExist,
)
from databricks.sdk.service.serving import (
    EndpointCoreConfigInput,
    EndpointStateConfigUpdate,
    EndpointStateReady,
    EndpointTag,
    Route,
    ServedEntityInput,
    TrafficConfig,
)
from ptdeploy.workspace import control

pytestmark = pytest.mark.slow
TIMEOUT = timedelta(minutes=5)


@pytest.fixture(scope="module")
def ws():
    ws = control.ensure_running()
    yield ws
    control.stop(quiet=True)


@pytest.fixture(scope="module")
def w(ws) -> WorkspaceClient:
    return WorkspaceClient(host=ws.host, token=ws.token, auth_type="pat")


def chunk(w: WorkspaceClient, name: str, version: str) -> int:
    info = w.api_client.do(
        "GET", f"/api/2.0/serving-endpoints/get-model-optimization-info/{name}/{version}"
    )
    assert info["optimizable"] is True
    return info["throughput_chunk_size"]


def wait_ready(w: WorkspaceClient, name: str, timeout: float = 300) -> None:
    """READY *and* NOT_UPDATING (the SDK's own waiter checks only the second)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = w.serving_endpoints.get(name).state
        if (
            state.ready == EndpointStateReady.READY
            and state.config_update == EndpointStateConfigUpdate.NOT_UPDATING
        ):
            return
        assert state.config_update != EndpointStateConfigUpdate.UPDATE_FAILED, (
            w.serving_endpoints.get(name).as_dict()
        )
        time.sleep(0.5)
    raise AssertionError(
        f"{name} not ready after {timeout}s: {w.serving_endpoints.get(name).as_dict()}"
    )


@pytest.fixture(scope="module")
def completions_ep(w, registered_tiny_completions) -> str:
    """Created with the SDK's create_and_wait, as a notebook would."""
    name, version = registered_tiny_completions
    size = chunk(w, name, version)
    ep = w.serving_endpoints.create_and_wait(
        name="tiny-completions",
        config=EndpointCoreConfigInput(
            name="tiny-completions",
            served_entities=[
                ServedEntityInput(
                    entity_name=name,
                    entity_version=version,
                    min_provisioned_throughput=0,
                    max_provisioned_throughput=size,
                    scale_to_zero_enabled=True,
                )
            ],
        ),
        timeout=TIMEOUT,
    )
    assert ep.state.config_update == EndpointStateConfigUpdate.NOT_UPDATING
    assert ep.state.ready == EndpointStateReady.READY
    assert ep.task == "llm/v1/completions"
    return "tiny-completions"


@pytest.fixture(scope="module")
def chat_ep(w, ws, registered_tiny_chat, monkeypatch_module) -> str:
    """Created with mlflow.deployments' Databricks client (env-var auth)."""
    from mlflow.deployments import get_deploy_client

    name, version = registered_tiny_chat
    size = chunk(w, name, version)
    monkeypatch_module.setenv("DATABRICKS_HOST", ws.host)
    monkeypatch_module.setenv("DATABRICKS_TOKEN", ws.token)
    client = get_deploy_client("databricks")
    created = client.create_endpoint(
        config={
            "name": "tiny-chat",
            "config": {
                "served_entities": [
                    {
                        "entity_name": name,
                        "entity_version": version,
                        "min_provisioned_throughput": size,
                        "max_provisioned_throughput": 2 * size,
                    }
                ]
            },
        }
    )
    assert created["state"]["config_update"] == "IN_PROGRESS"
    wait_ready(w, "tiny-chat")
    assert client.get_endpoint("tiny-chat")["state"]["ready"] == "READY"
    return "tiny-chat"


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def embeddings_ep(ws, registered_minilm) -> str:
    """Created with plain ``requests``, exactly as the documentation page does it."""
    model_name, model_version = registered_minilm
    API_ROOT, API_TOKEN = ws.host, ws.token
    # (sic) the documentation's header typo: the body is JSON whatever it says
    headers = {"Context-Type": "text/json", "Authorization": f"Bearer {API_TOKEN}"}
    optimizable_info = requests.get(
        url=f"{API_ROOT}/api/2.0/serving-endpoints/get-model-optimization-info/{model_name}/{model_version}",
        headers=headers,
    ).json()
    if "optimizable" not in optimizable_info or not optimizable_info["optimizable"]:
        raise ValueError("Model is not eligible for provisioned throughput")
    chunk_size = optimizable_info["throughput_chunk_size"]
    data = {
        "name": "minilm-embeddings",
        "config": {
            "served_entities": [
                {
                    "entity_name": model_name,
                    "entity_version": int(model_version),  # the page sends an int
                    "min_provisioned_throughput": 2 * chunk_size,
                    "max_provisioned_throughput": 3 * chunk_size,
                }
            ]
        },
    }
    response = requests.post(
        url=f"{API_ROOT}/api/2.0/serving-endpoints", json=data, headers=headers
    )
    assert response.status_code == 200, response.text
    entity = response.json()["pending_config"]["served_entities"][0]
    assert entity["min_provisioned_throughput"] == 2 * chunk_size
    assert entity["entity_version"] == str(model_version)
    wait_ready(WorkspaceClient(host=ws.host, token=ws.token, auth_type="pat"), "minilm-embeddings")
    return "minilm-embeddings"


# ------------------------------------------------------------------- SDK


def test_sdk_errors_map_to_databricks_exceptions(
    w, ws, completions_ep, registered_tiny_completions
):
    name, version = registered_tiny_completions
    before = {e.name for e in w.serving_endpoints.list()}  # other tests' endpoints too
    assert completions_ep in before
    with pytest.raises(ResourceAlreadyExists):
        w.serving_endpoints.create(
            name=completions_ep,
            config=EndpointCoreConfigInput(
                name=completions_ep,
                served_entities=[
                    ServedEntityInput(
                        entity_name=name,
                        entity_version=version,
                        max_provisioned_throughput=chunk(w, name, version),
                    )
                ],
            ),
        )
    with pytest.raises(ResourceDoesNotExist):
        w.serving_endpoints.get("no-such-endpoint")
    with pytest.raises(NotFound):
        w.serving_endpoints.delete("no-such-endpoint")
    with pytest.raises(NotFound):
        w.serving_endpoints.update_config(
            "no-such-endpoint",
            served_entities=[
                ServedEntityInput(
                    entity_name=name, entity_version=version, max_provisioned_throughput=10
                )
            ],
        )
    with pytest.raises(InvalidParameterValue) as bad:
        w.serving_endpoints.create(
            name="odd-throughput",
            config=EndpointCoreConfigInput(
                name="odd-throughput",
                served_entities=[
                    ServedEntityInput(
                        entity_name=name,
                        entity_version=version,
                        max_provisioned_throughput=chunk(w, name, version) + 5,
                    )
                ],
            ),
        )
    assert "max_provisioned_throughput" in str(bad.value) and "valid values" in str(bad.value)
    with pytest.raises(
        InvalidParameterValue,
        match="name=.bad.name. is not valid: expected 1 to 63 letters, digits",
    ):
        w.serving_endpoints.create(
            name="bad.name", config=EndpointCoreConfigInput(name="bad.name", served_entities=[])
        )
    with pytest.raises(PermissionDenied, match="Invalid access token"):
        WorkspaceClient(
            host=ws.host, token="not-the-token", auth_type="pat"
        ).serving_endpoints.list()
    assert {e.name for e in w.serving_endpoints.list()} == before  # nothing half-written


def test_sdk_query_and_bad_requests_keep_the_worker_serving(w, ws, completions_ep):
    answer = w.serving_endpoints.query(
        completions_ep, prompt="The capital of France is", max_tokens=5, temperature=0.0
    )
    assert answer.choices and isinstance(answer.choices[0].text, str)
    assert answer.served_model_name  # the served-model-name header
    assert answer.usage.completion_tokens <= 5
    url = f"{ws.host}/serving-endpoints/{completions_ep}/invocations"
    auth = {"Authorization": f"Bearer {ws.token}"}
    malformed = requests.post(url, data=b'{"prompt": ', headers=auth)
    assert malformed.status_code == 400 and malformed.json()["error_code"] == "MALFORMED_REQUEST"
    missing = requests.post(url, json={"max_tokens": 5}, headers=auth)
    assert missing.status_code == 400 and "prompt" in missing.json()["message"]
    negative = requests.post(url, json={"prompt": "hi", "max_tokens": -3}, headers=auth)
    assert negative.status_code == 400 and "max_tokens" in negative.json()["message"]
    with pytest.raises(BadRequest, match="messages"):
        w.serving_endpoints.query(
            completions_ep, messages=[]
        )  # chat request to a completions endpoint
    again = w.serving_endpoints.query(
        completions_ep, prompt="The capital of France is", max_tokens=5, temperature=0.0
    )
    assert again.choices[0].text == answer.choices[0].text  # still serving, and deterministic


def test_update_config_splits_traffic_and_refuses_a_concurrent_update(
    w, completions_ep, registered_tiny_completions
):
    name, version = registered_tiny_completions
    size = chunk(w, name, version)
    current = w.serving_endpoints.get(completions_ep).config.served_entities[0].name

    def entity(served: str, max_chunks: int) -> ServedEntityInput:
        return ServedEntityInput(
            name=served,
            entity_name=name,
            entity_version=version,
            min_provisioned_throughput=0,
            max_provisioned_throughput=max_chunks * size,
        )

    waiter = w.serving_endpoints.update_config(
        completions_ep,
        served_entities=[entity(current, 2), entity("canary", 1)],
        traffic_config=TrafficConfig(
            routes=[
                Route(served_model_name=current, traffic_percentage=50),
                Route(served_entity_name="canary", traffic_percentage=50),
            ]
        ),
    )
    # the canary worker is loading: another update is refused, the old config serves
    with pytest.raises(ResourceConflict, match="IN_PROGRESS"):
        w.serving_endpoints.update_config(completions_ep, served_entities=[entity(current, 1)])
    assert (
        w.serving_endpoints.query(completions_ep, prompt="hi", max_tokens=1).served_model_name
        == current
    )
    ep = waiter.result(timeout=TIMEOUT)
    assert ep.config.config_version == 2
    assert {e.name: e.max_provisioned_throughput for e in ep.config.served_entities} == {
        current: 2 * size,
        "canary": size,
    }
    served = [
        w.serving_endpoints.query(completions_ep, prompt="hello", max_tokens=2).served_model_name
        for _ in range(4)
    ]
    assert sorted(served) == sorted([current, "canary"] * 2)
    # back to one entity: the loaded worker is kept, the canary's stopped
    ep = w.serving_endpoints.update_config_and_wait(
        completions_ep, served_entities=[entity(current, 1)], timeout=TIMEOUT
    )
    assert [e.name for e in ep.config.served_entities] == [current]
    assert ep.state.ready == EndpointStateReady.READY


# --------------------------------------------------- mlflow.deployments / openai


def test_mlflow_deployments_predict(chat_ep):
    from mlflow.deployments import get_deploy_client

    client = get_deploy_client("databricks")
    out = client.predict(
        endpoint=chat_ep,
        inputs={
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 4,
            "temperature": 0.0,
        },
    )
    assert out["choices"][0]["message"]["role"] == "assistant"
    assert client.get_endpoint(chat_ep)["task"] == "llm/v1/chat"


def test_openai_client_chat_completions_embeddings(ws, chat_ep, completions_ep, embeddings_ep):
    import openai

    client = openai.OpenAI(api_key=ws.token, base_url=f"{ws.host}/serving-endpoints", max_retries=0)
    chat = client.chat.completions.create(
        model=chat_ep, messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0
    )
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens <= 4
    completion = client.completions.create(
        model=completions_ep, prompt="Paris is", max_tokens=3, temperature=0
    )
    assert isinstance(completion.choices[0].text, str)
    emb = client.embeddings.create(
        model=embeddings_ep, input=["A cat sits on the mat.", "Stock prices fell."]
    )
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 384
    with pytest.raises(openai.BadRequestError, match="llm/v1/embeddings"):
        client.chat.completions.create(
            model=embeddings_ep, messages=[{"role": "user", "content": "hi"}]
        )
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-endpoint", prompt="x")


def test_openai_client_streams_chat_and_completions(ws, chat_ep, completions_ep):
    """stream=True through the openai client: chunks that add up to the whole answer."""
    import openai

    client = openai.OpenAI(api_key=ws.token, base_url=f"{ws.host}/serving-endpoints", max_retries=0)
    messages = [{"role": "user", "content": "Tell me about Spark"}]
    whole = client.chat.completions.create(
        model=chat_ep, messages=messages, max_tokens=12, temperature=0
    )
    chunks = list(
        client.chat.completions.create(
            model=chat_ep,
            messages=messages,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content
    finish = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finish[-1] == whole.choices[0].finish_reason and set(finish[:-1]) == {None}
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert len(chunks) > 3  # token by token
    pieces = client.completions.create(
        model=completions_ep, prompt="Paris is", max_tokens=8, temperature=0, stream=True
    )
    text = "".join(p.choices[0].text for p in pieces if p.choices)
    full = client.completions.create(
        model=completions_ep, prompt="Paris is", max_tokens=8, temperature=0
    )
    assert text == full.choices[0].text


def test_requests_stream_reads_server_sent_events(ws, completions_ep):
    """Plain requests with stream=True, as a user's own SSE loop reads it."""
    import json

    r = requests.post(
        f"{ws.host}/serving-endpoints/{completions_ep}/invocations",
        headers={"Authorization": f"Bearer {ws.token}"},
        json={"prompt": "Paris is", "max_tokens": 6, "temperature": 0, "stream": True},
        stream=True,
        timeout=60,
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    data = [line[6:] for line in r.iter_lines(decode_unicode=True) if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_query_stream_helpers(w, chat_ep, completions_ep):
    from ptdeploy.serving import query

    deltas = list(query.stream_chat(w, chat_ep, [{"role": "user", "content": "hi"}], 10))
    whole = query.chat(w, chat_ep, [{"role": "user", "content": "hi"}], 10)
    assert "".join(d.text for d in deltas) == whole.message.content
    assert [d.finish_reason for d in deltas if d.finish_reason] == [whole.finish_reason]
    assert (
        deltas[-1].usage is not None
        and deltas[-1].usage.completion_tokens == whole.usage.completion_tokens
    )
    pieces = list(query.stream_complete(w, completions_ep, "Paris is", 6))
    assert (
        "".join(p.text for p in pieces) == query.complete(w, completions_ep, "Paris is", 6).texts[0]
    )


# ------------------------------------------------------------------ restart


def test_restart_loses_nothing(
    w, completions_ep, chat_ep, embeddings_ep, registered_tiny_completions
):
    w.serving_endpoints.patch(completions_ep, add_tags=[EndpointTag(key="team", value="ml")])
    for name in (chat_ep, embeddings_ep):  # fewer workers to load again
        w.serving_endpoints.delete(name)
    before = {e.name for e in w.serving_endpoints.list()}
    assert completions_ep in before and chat_ep not in before
    control.stop(quiet=True)
    new = control.ensure_running()
    w2 = WorkspaceClient(host=new.host, token=new.token, auth_type="pat")
    assert {e.name for e in w2.serving_endpoints.list()} == before
    ep = w2.serving_endpoints.get(completions_ep)
    assert ep.tags == [EndpointTag(key="team", value="ml")]
    assert ep.config.config_version == 3  # the last config, not the first
    name, version = registered_tiny_completions
    assert chunk(w2, name, version) > 0  # the registry is intact
    wait_ready(w2, completions_ep)
    answer = w2.serving_endpoints.query(
        completions_ep, prompt="The capital of France is", max_tokens=3
    )
    assert answer.choices
