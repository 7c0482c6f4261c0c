"""Request validation and response shapes of the llm/v1 serving API."""

from __future__ import annotations

import base64
import pickle
import struct

import pytest
from ptdeploy.errors import InvalidRequestError
from ptdeploy.llm_tasks import TASK_CHAT, TASK_COMPLETIONS, TASK_EMBEDDINGS
from ptdeploy.workspace.schemas import (
    ChatRequest,
    Choice,
    CompletionRequest,
    EmbeddingRequest,
    TokenLogprob,
    TopLogprob,
    Usage,
    chat_response,
    completion_response,
    embedding_response,
    parse_request,
)

USER = [{"role": "user", "content": "hello"}]


def invalid(task: str, body: object) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as err:
        parse_request(task, body)
    return err.value


def test_valid_requests_and_defaults():
    c = parse_request(TASK_COMPLETIONS, {"prompt": ["a", "b"], "max_tokens": 5, "stop": "\n"})
    assert isinstance(c, CompletionRequest)
    assert c.prompts == ["a", "b"] and c.stop == ("\n",) and c.max_tokens == 5
    # Databricks' defaults: sampling at temperature 1, one choice, no stop.
    assert (c.temperature, c.top_p, c.n, c.greedy) == (1.0, 1.0, 1, False)
    chat = parse_request(
        TASK_CHAT,
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}],
                },
            ],
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": 3,
            "stop": ["a", ""],
            "model": "my-endpoint",  # the OpenAI client sends the endpoint name here
        },
    )
    assert isinstance(chat, ChatRequest)
    assert chat.greedy and chat.messages[1].text == "hi there" and chat.stop == ("a",)
    emb = parse_request(TASK_EMBEDDINGS, {"input": "x", "encoding_format": "base64"})
    assert isinstance(emb, EmbeddingRequest) and emb.inputs == ["x"]


@pytest.mark.parametrize(
    ("task", "body", "field", "words"),
    [
        (TASK_COMPLETIONS, {"prompt": "x", "max_tokens": -5}, "max_tokens", ["-5", ">= 1"]),
        (TASK_COMPLETIONS, {"prompt": "x", "max_tokens": "10"}, "max_tokens", ["'10'", "integer"]),
        (TASK_COMPLETIONS, {"max_tokens": 5}, "prompt", ["Missing", "prompt"]),
        (TASK_COMPLETIONS, {"prompt": ["a", 3]}, "prompt", ["prompt[1]", "string"]),
        (TASK_COMPLETIONS, {"prompt": "x", "temperature": 3}, "temperature", ["3", "2.0"]),
        (TASK_COMPLETIONS, {"prompt": "x", "top_p": 0}, "top_p", ["top_p", "greater than 0"]),
        (TASK_COMPLETIONS, {"prompt": "x", "n": 0}, "n", ["n must be", "between 1"]),
        (TASK_COMPLETIONS, {"prompt": "x", "stop": 3}, "stop", ["stop", "list of strings"]),
        (TASK_COMPLETIONS, {"prompt": "x", "logprobs": 9}, "logprobs", ["9", "between 0 and 5"]),
        (TASK_CHAT, {"messages": []}, "messages", ["empty", "non-empty list"]),
        (TASK_CHAT, {"messages": "hello"}, "messages", ["'hello'", "list"]),
        (
            TASK_CHAT,
            {"messages": [{"role": "bot", "content": "x"}]},
            "messages[0].role",
            ["'bot'", "'system', 'user', 'assistant'"],
        ),
        (TASK_CHAT, {"messages": [{"role": "user"}]}, "messages[0].content", ["Missing"]),
        (TASK_CHAT, {"messages": USER, "top_logprobs": 2}, "top_logprobs", ["logprobs=true"]),
        (
            TASK_CHAT,
            {"messages": USER, "logprobs": True, "top_logprobs": 21},
            "top_logprobs",
            ["21", "0 and 20"],
        ),
        (TASK_EMBEDDINGS, {"input": "x", "stream": True}, "stream", ["stream=false"]),
        (TASK_CHAT, {"messages": USER, "stream": "yes"}, "stream", ["true or false"]),
        (
            TASK_CHAT,
            {"messages": USER, "stream_options": {"include_usage": True}},
            "stream_options",
            ["stream=true"],
        ),
        (
            TASK_CHAT,
            {"messages": USER, "tools": [{"type": "function"}]},
            "tools",
            ["not supported"],
        ),
        (
            TASK_CHAT,
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content",
            ["image_url", "text only"],
        ),
        (TASK_EMBEDDINGS, {"input": []}, "input", ["empty list"]),
        (
            TASK_EMBEDDINGS,
            {"input": "x", "encoding_format": "hex"},
            "encoding_format",
            ["'hex'", "'base64'"],
        ),
    ],
)
def test_invalid_values_name_the_field_the_value_and_what_is_valid(task, body, field, words):
    err = invalid(task, body)
    assert err.field == field
    assert err.error_code == "INVALID_PARAMETER_VALUE"
    for word in words:
        assert word in str(err), (word, str(err))


def test_unknown_fields_are_refused_like_databricks():
    err = invalid(TASK_COMPLETIONS, {"prompt": "x", "max_token": 5})
    assert err.error_code == "BAD_REQUEST" and err.field == "max_token"
    assert 'unknown field "max_token"' in str(err) and "max_tokens" in str(err)
    # the misspelling is reported even though the required field is also missing
    err = invalid(TASK_EMBEDDINGS, {"inputs": ["a"]})
    assert err.field == "inputs" and "input" in str(err)
    err = invalid(TASK_CHAT, {"messages": [{"role": "user", "content": "x", "foo": 1}]})
    assert err.field == "messages[0].foo" and "content, name, role" in str(err)


def test_body_must_be_an_object():
    err = invalid(TASK_COMPLETIONS, ["a prompt"])
    assert err.field == "body" and err.error_code == "BAD_REQUEST"
    assert "JSON object" in str(err) and "'prompt'" in str(err)
    with pytest.raises(InvalidRequestError, match="Unknown task"):
        parse_request("llm/v1/images", {})


def test_invalid_request_error_survives_pickling():
    """It crosses the worker's process boundary."""
    err = pickle.loads(pickle.dumps(InvalidRequestError("max_tokens", "too big", "X")))
    assert (err.field, err.message, err.error_code, str(err)) == (
        "max_tokens",
        "too big",
        "X",
        "too big",
    )


def test_completion_and_chat_response_shapes():
    lp = TokenLogprob(
        "Hi",
        -0.5,
        (72, 105),
        (TopLogprob("Hi", -0.5, (72, 105)), TopLogprob("Yo", -1.5, (89, 111))),
    )
    choices = [Choice("Hi", "length", (lp,)), Choice("", "stop", ())]
    usage = Usage(prompt_tokens=4, completion_tokens=2)
    out = completion_response(choices, usage, model="ep", with_logprobs=True, created=7)
    assert out["object"] == "text_completion" and out["id"].startswith("cmpl-")
    assert out["created"] == 7 and out["model"] == "ep"
    assert out["usage"] == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
    first = out["choices"][0]
    assert first["index"] == 0 and first["text"] == "Hi" and first["finish_reason"] == "length"
    assert first["logprobs"] == {
        "tokens": ["Hi"],
        "token_logprobs": [-0.5],
        "top_logprobs": [{"Hi": -0.5, "Yo": -1.5}],
        "text_offset": [0],
    }
    assert out["choices"][1]["index"] == 1
    chat = chat_response(choices, usage, model="ep", with_logprobs=True)
    assert chat["object"] == "chat.completion" and chat["id"].startswith("chatcmpl-")
    msg = chat["choices"][0]
    assert msg["message"] == {"role": "assistant", "content": "Hi"}
    assert msg["logprobs"]["content"][0] == {
        "token": "Hi",
        "logprob": -0.5,
        "bytes": [72, 105],
        "top_logprobs": [
            {"token": "Hi", "logprob": -0.5, "bytes": [72, 105]},
            {"token": "Yo", "logprob": -1.5, "bytes": [89, 111]},
        ],
    }
    assert chat_response(choices, usage, model="ep")["choices"][0]["logprobs"] is None


def test_embedding_response_float_and_base64():
    vectors = [[0.25, -1.0, 3.5]]
    out = embedding_response(vectors, Usage(3), model="ep")
    assert out["object"] == "list"
    assert out["data"] == [{"object": "embedding", "index": 0, "embedding": [0.25, -1.0, 3.5]}]
    assert out["usage"] == {"prompt_tokens": 3, "total_tokens": 3}  # no completion_tokens
    b64 = embedding_response(vectors, Usage(3), model="ep", encoding_format="base64")
    raw = base64.b64decode(b64["data"][0]["embedding"])
    assert list(struct.unpack("<3f", raw)) == [0.25, -1.0, 3.5]  # what the OpenAI client decodes
