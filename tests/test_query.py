"""Queries: argument checks, typed results, reasoning split, similarity, OpenAI client.

Driven through databricks-sdk against the local workspace's real app (in-process, see
``tests/fakes.py``): routes, request checks and error codes are the app's; only the
worker is scripted, answering OpenAI-shaped bodies as a foundation-model endpoint does
and recording what it was sent.
"""

from __future__ import annotations

import math

import fakes
import numpy as np
import pytest
from databricks.sdk import WorkspaceClient
from databricks.sdk.service.serving import ChatMessage, ChatMessageRole, QueryEndpointResponse
from ptdeploy.errors import EndpointNotFoundError, InvalidRequestError, PtdeployError, QueryError
from ptdeploy.limits import MAX_N
from ptdeploy.serving.query import (
    Reasoned,
    chat,
    complete,
    cosine_similarity_table,
    embed,
    openai_client,
    split_reasoning,
)

R1_OUTPUT = "<think>\nThe user asks for the capital of France. That is Paris.\n</think>\n\nThe capital of France is **Paris**."
ENDPOINTS = {"llama-completions": "llm/v1/completions", "r1-chat": "llm/v1/chat"}
ENDPOINTS["gte-large"] = "llm/v1/embeddings"


def llama_completions(body):
    prompts = [body["prompt"]] if isinstance(body["prompt"], str) else body["prompt"]
    choices = [
        {
            "index": i * body["n"] + k,
            "text": f" answer {i}.{k}",
            "finish_reason": "length",
            "logprobs": None,
        }
        for i in range(len(prompts))
        for k in range(body["n"])
    ]
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1700000000,
        "model": "llama-completions",
        "choices": choices[::-1],  # order by index, not by position
        "usage": {"prompt_tokens": 12, "completion_tokens": 16, "total_tokens": 28},
    }


def r1_chat(body):
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": R1_OUTPUT},
        "finish_reason": "stop",
    }
    if body.get("logprobs"):
        k = body.get("top_logprobs") or 0
        alts = [
            {"token": "The", "logprob": -0.02, "bytes": [84, 104, 101]},
            {"token": "Paris", "logprob": -4.1, "bytes": [80]},
        ]
        choice["logprobs"] = {
            "content": [
                {
                    "token": "The",
                    "logprob": -0.02,
                    "bytes": [84, 104, 101],
                    "top_logprobs": alts[:k],
                },
                {"token": " capital", "logprob": -0.5, "bytes": [32], "top_logprobs": []},
            ]
        }
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "r1-chat",
        "choices": [choice],
        "usage": {"prompt_tokens": 9, "completion_tokens": 30, "total_tokens": 39},
    }


def gte_large(body):
    vectors = [[3.0, 4.0], [0.0, 2.0], [1.0, 1.0]][: len(body["input"])]
    data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
    return {
        "object": "list",
        "model": "gte-large",
        "data": data[::-1],
        "usage": {"prompt_tokens": 8, "total_tokens": 8},
    }


def answer(task, body):
    if body.get("max_tokens", 0) > 4096:  # as a worker refuses it: a 400 from the endpoint
        raise InvalidRequestError("max_tokens", "max_tokens must be at most 4096.")
    by_task = {"llm/v1/completions": llama_completions, "llm/v1/chat": r1_chat}
    return {**by_task, "llm/v1/embeddings": gte_large}[task](body)


@pytest.fixture(scope="module")
def worker():
    return fakes.recording_worker(answer)


@pytest.fixture
def api(worker):
    """What the endpoints' workers were sent in this test: ``api.bodies == [(endpoint,
    body), ...]``."""
    worker.bodies.clear()
    return worker


@pytest.fixture(scope="module")
def w(module_local_client, worker) -> WorkspaceClient:
    """One app for the module: queries change no endpoint."""
    catalog = fakes.Catalog(task_of=lambda name: ENDPOINTS[name.rsplit(".", 1)[-1]])
    client = module_local_client(worker, catalog)
    fakes.create_endpoints(client, {name: f"main.default.{name}" for name in ENDPOINTS})
    return client


# ------------------------------------------------------------------ completions


def test_complete_sends_the_fields_and_keeps_finish_reasons(api, w):
    result = complete(w, "llama-completions", "What is Apache Spark?", max_tokens=16, stop="\n\n")
    assert api.bodies == [
        (
            "llama-completions",
            {
                "prompt": "What is Apache Spark?",
                "max_tokens": 16,
                "temperature": 0.0,
                "n": 1,
                "stop": ["\n\n"],
            },
        )
    ]
    assert result.text == " answer 0.0"
    assert result.finish_reasons == ["length"]
    assert result.usage.completion_tokens == 16


def test_complete_several_prompts_and_candidates_in_index_order(w):
    result = complete(w, "llama-completions", ["a", "b"], max_tokens=4, n=2, temperature=0.7)
    assert result.texts == [" answer 0.0", " answer 0.1", " answer 1.0", " answer 1.1"]


def test_sdk_query_loses_finish_reason():
    """Why complete/chat do not parse through the SDK (see ptdeploy.serving.query's docstring)."""
    parsed = QueryEndpointResponse.from_dict(
        {"choices": [{"index": 0, "text": "x", "finish_reason": "stop"}]}
    )
    assert parsed.choices[0].finish_reason is None


# ------------------------------------------------------------------------- chat


def test_chat_with_logprobs(api, w):
    result = chat(
        w,
        "r1-chat",
        [{"role": "user", "content": "Capital of France?"}],
        max_tokens=64,
        logprobs=True,
        top_logprobs=2,
    )
    body = api.bodies[0][1]
    assert body == {
        "messages": [{"role": "user", "content": "Capital of France?"}],
        "max_tokens": 64,
        "temperature": 0.0,
        "logprobs": True,
        "top_logprobs": 2,
    }
    assert result.finish_reason == "stop"
    assert result.message.role == "assistant"
    assert [t.token for t in result.logprobs] == ["The", " capital"]
    first = result.logprobs[0]
    assert first.prob == pytest.approx(math.exp(-0.02))
    assert [(t.token, t.logprob) for t in first.top_logprobs] == [("The", -0.02), ("Paris", -4.1)]
    assert result.reasoned() == Reasoned(
        "The user asks for the capital of France. That is Paris.",
        "The capital of France is **Paris**.",
    )


def test_chat_without_logprobs_and_sdk_messages(api, w):
    result = chat(
        w, "r1-chat", [ChatMessage(role=ChatMessageRole.USER, content="hi")], max_tokens=8
    )
    assert "logprobs" not in api.bodies[0][1]
    assert result.logprobs is None


def test_chat_content_blocks_with_reasoning():
    from ptdeploy.serving.query import _content_text

    text, reasoning = _content_text(
        [
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "Think first."}]},
            {"type": "text", "text": "Answer."},
        ]
    )
    assert (text, reasoning) == ("Answer.", "Think first.")


# ------------------------------------------------------------------- embeddings


def test_embed_in_input_order_raw_and_normalized(api, w):
    raw = embed(w, "gte-large", ["a", "b", "c"])
    assert api.bodies[0] == ("gte-large", {"input": ["a", "b", "c"]})
    assert raw.vectors == [[3.0, 4.0], [0.0, 2.0], [1.0, 1.0]]
    assert raw.usage.prompt_tokens == 8 and raw.dim == 2
    unit = embed(w, "gte-large", ["a", "b", "c"], normalize=True)
    assert unit.vectors[0] == pytest.approx([0.6, 0.8])
    assert np.linalg.norm(unit.array(), axis=1) == pytest.approx([1.0, 1.0, 1.0])
    assert unit.array().shape == (3, 2)


def test_embed_single_string(w):
    assert len(embed(w, "gte-large", "one").vectors) == 1


# ------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda w: complete(w, "llama-completions", "p", max_tokens=0), "max_tokens=0"),
        (lambda w: complete(w, "llama-completions", "p", max_tokens=1.5), "max_tokens=1.5"),
        (lambda w: complete(w, "llama-completions", "p", max_tokens=True), "max_tokens=True"),
        (lambda w: complete(w, "llama-completions", "p", 8, temperature=-0.1), "temperature=-0.1"),
        (lambda w: complete(w, "llama-completions", "p", 8, temperature=2.5), "temperature=2.5"),
        (
            lambda w: complete(w, "llama-completions", "p", 8, temperature="0.5"),
            "temperature='0.5'",
        ),
        (lambda w: complete(w, "llama-completions", "p", 8, n=0), "n=0"),
        (lambda w: complete(w, "llama-completions", "p", 8, n=MAX_N + 1), f"n={MAX_N + 1}"),
        (lambda w: complete(w, "llama-completions", "p", 8, stop=[""]), r"stop\[0\]=''"),
        (lambda w: complete(w, "llama-completions", "", 8), "prompt=''"),
        (lambda w: complete(w, "llama-completions", [], 8), r"prompt=\[\]"),
        (lambda w: complete(w, "llama-completions", ["ok", "  "], 8), r"prompt\[1\]"),
        (
            lambda w: chat(w, "r1-chat", [{"role": "user", "content": "x"}], 8, top_logprobs=2),
            "needs logprobs=True",
        ),
        (
            lambda w: chat(
                w, "r1-chat", [{"role": "user", "content": "x"}], 8, logprobs=True, top_logprobs=21
            ),
            "top_logprobs=21",
        ),
        (
            lambda w: chat(
                w, "r1-chat", [{"role": "user", "content": "x"}], 8, logprobs=True, top_logprobs=-1
            ),
            "top_logprobs=-1",
        ),
        (
            lambda w: chat(w, "r1-chat", [{"role": "robot", "content": "x"}], 8),
            r"messages\[0\].role='robot'",
        ),
        (lambda w: chat(w, "r1-chat", [{"role": "user"}], 8), r"messages\[0\].content=None"),
        (lambda w: chat(w, "r1-chat", [], 8), "messages is empty"),
        (lambda w: chat(w, "r1-chat", "hello", 8), "messages='hello'"),
        (lambda w: embed(w, "gte-large", []), r"inputs=\[\]"),
        (lambda w: embed(w, "gte-large", ["a", ""]), r"inputs\[1\]"),
        (lambda w: embed(w, "gte-large", None), "inputs=None"),
    ],
)
def test_arguments_refused_before_any_call(api, w, call, fragment):
    with pytest.raises(QueryError, match=fragment) as err:
        call(w)
    assert isinstance(err.value, ValueError)
    assert api.bodies == []


def test_unknown_endpoint_and_server_refusal(w):
    with pytest.raises(EndpointNotFoundError, match="'nope'"):
        complete(w, "nope", "p", 8)
    with pytest.raises(EndpointNotFoundError, match="'nope'"):
        embed(w, "nope", ["a"])
    with pytest.raises(QueryError, match="max_tokens must be at most 4096"):
        complete(w, "llama-completions", "p", 5000)


def test_wrong_kind_of_endpoint_is_explained(w):
    # the endpoint refuses a request of another task with a 400 that names both tasks
    with pytest.raises(QueryError, match="serves llm/v1/chat requests.*llm/v1/embeddings"):
        embed(w, "r1-chat", ["a"])


# -------------------------------------------------------------------- reasoning


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            R1_OUTPUT,
            Reasoned(
                "The user asks for the capital of France. That is Paris.",
                "The capital of France is **Paris**.",
            ),
        ),
        # R1-distill chat templates end the prompt with "<think>\n": the output only closes it.
        (
            "Okay, so I need to add 2 and 3.\n2 + 3 = 5.\n</think>\n\n2 + 3 = **5**.",
            Reasoned("Okay, so I need to add 2 and 3.\n2 + 3 = 5.", "2 + 3 = **5**."),
        ),
        # Cut off by max_tokens mid-thought.
        (
            "<think>\nLet me work through this step by step. First,",
            Reasoned("Let me work through this step by step. First,", "", complete=False),
        ),
        (
            "<think>\n\n</think>\n\nHello! How can I help you today?",
            Reasoned("", "Hello! How can I help you today?"),
        ),
        (
            "<think>a</think>Part one.<think>b</think>\nPart two.",
            Reasoned("a\n\nb", "Part one.\n\nPart two."),
        ),
        ("Just an answer.  ", Reasoned("", "Just an answer.")),
        ("<think>x</think> answer </think>", Reasoned("x", "answer")),
        ("   ", Reasoned("", "")),
    ],
)
def test_split_reasoning(text, expected):
    assert split_reasoning(text) == expected


def test_split_reasoning_when_the_prompt_opened_think():
    assert split_reasoning("Still thinking about it", prompt_opened=True) == Reasoned(
        "Still thinking about it", "", complete=False
    )
    # A closed block is read the same way either way.
    assert split_reasoning(R1_OUTPUT, prompt_opened=True) == split_reasoning(R1_OUTPUT)


# ------------------------------------------------------------------- similarity


def test_cosine_similarity_table():
    table = cosine_similarity_table(["cat", "kitten", "car"], [[1.0, 0.0], [2.0, 0.1], [0.0, 3.0]])
    assert table.matrix[0][0] == pytest.approx(1.0)
    assert table.matrix[0][1] == pytest.approx(2.0 / math.hypot(2.0, 0.1))
    assert table.matrix[0][2] == pytest.approx(0.0)
    assert table.matrix == [list(r) for r in zip(*table.matrix, strict=True)]  # symmetric
    assert table.most_similar(0)[0] == "kitten"
    rows = table.rows()
    assert rows[2]["text"] == "car" and rows[2]["car"] == pytest.approx(1.0)
    printed = str(table)
    assert "kitten" in printed and "#2" in printed and "1.000" in printed


def test_cosine_similarity_table_refusals_and_zero_vectors():
    with pytest.raises(QueryError, match="same length"):
        cosine_similarity_table(["a"], [[1.0], [2.0]])
    with pytest.raises(QueryError, match="dimension"):
        cosine_similarity_table(["a", "b"], [[1.0], [2.0, 1.0]])
    table = cosine_similarity_table(["a", "zero"], [[1.0, 0.0], [0.0, 0.0]])
    assert math.isnan(table.matrix[0][1])


# ----------------------------------------------------------------------- openai


def test_openai_client_uses_the_sdk_token(w):
    client = openai_client(w, max_retries=0)
    assert str(client.base_url).rstrip("/") == f"{w.config.host}/serving-endpoints"
    assert client.api_key == fakes.TOKEN


def test_openai_client_needs_a_bearer_token(w):
    basic = WorkspaceClient(host=w.config.host, username="user", password="pass", auth_type="basic")
    with pytest.raises(PtdeployError, match="bearer token"):
        openai_client(basic)
