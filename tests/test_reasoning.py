"""Reasoning chat models: prompts as DeepSeek recommends, the chat template's <think>,
and replies split into reasoning and answer (the split itself: tests/test_query.py)."""

from __future__ import annotations

import copy

import fakes
import pytest
from ptdeploy import targets
from ptdeploy.errors import QueryError
from ptdeploy.models import model_logging, registry, sources
from ptdeploy.templates import reasoning

# The shape of DeepSeek-R1-Distill-Llama's template: no system prompt needed, and the
# generation prompt opens the reasoning block.
R1_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}"
    "<｜User｜>{{ m['content'] }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<｜Assistant｜><think>\n{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer():
    return sources.build_tiny_tokenizer()


@pytest.fixture
def r1_tokenizer(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = R1_TEMPLATE
    return tok


def test_user_message_only_no_system_prompt():
    assert reasoning.user_messages("What is 2+2?") == [{"role": "user", "content": "What is 2+2?"}]
    with pytest.raises(QueryError, match="prompt='  ' is empty"):
        reasoning.user_messages("  ")


def test_render_prompt_shows_what_the_model_sees(tokenizer, r1_tokenizer):
    chatml = reasoning.render_prompt(tokenizer, "What is 2+2?")
    assert chatml == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    assert "system" not in chatml
    assert reasoning.render_prompt(r1_tokenizer, "Hi").endswith("<｜Assistant｜><think>\n")


def test_template_opens_think(tokenizer, r1_tokenizer):
    assert model_logging.template_opens_think(r1_tokenizer) is True
    assert model_logging.template_opens_think(tokenizer) is False


def test_no_chat_template_is_refused(tokenizer):
    bare = copy.deepcopy(tokenizer)
    bare.chat_template = None
    with pytest.raises(QueryError, match="no chat template"):
        reasoning.render_prompt(bare, "Hi")


@pytest.mark.slow  # logs and registers a model in MLflow
def test_the_template_is_recorded_on_the_registered_version(registered_tiny_chat, r1_tokenizer):
    targets.configure_mlflow("local")
    name, version = registered_tiny_chat
    rv = registry.RegisteredVersion(name, version, None, f"models:/{name}/{version}", "")
    try:
        assert model_logging.record_template(rv, r1_tokenizer) is True
        assert model_logging.recorded_opens_think(name, version) is True
    finally:
        model_logging.record_template(rv, sources.build_tiny_tokenizer())
    assert model_logging.recorded_opens_think(name, version) is False
    assert model_logging.recorded_opens_think(name, "999") is False  # no such version: no tag


def r1_reply(task, body):
    """A chat endpoint answering with the content the test scripted (``reply``)."""
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": REPLY["content"]},
        "finish_reason": REPLY["finish_reason"],
    }
    return {
        "object": "chat.completion",
        "model": "r1",
        "choices": [choice],
        "usage": {"prompt_tokens": 20, "completion_tokens": 99, "total_tokens": 119},
    }


REPLY = {"content": "x", "finish_reason": "stop"}


@pytest.fixture(scope="module")
def endpoint(module_local_client):
    """The ``r1`` chat endpoint on the local workspace's real app, and its worker."""
    worker = fakes.recording_worker(r1_reply)
    w = module_local_client(worker, fakes.Catalog(task_of=lambda _: "llm/v1/chat"))
    fakes.create_endpoints(w, {"r1": "main.default.r1"})
    return w, worker


@pytest.fixture
def r1(endpoint):
    """``r1(content, finish_reason) -> (client, worker)``: script the next replies."""
    w, worker = endpoint
    worker.bodies.clear()

    def script(content: str, finish_reason: str = "stop"):
        REPLY.update(content=content, finish_reason=finish_reason)
        return w, worker

    return script


def test_ask_follows_the_recommendations_and_splits(r1):
    w, api = r1("Okay, 7 times 6.\n7*6 = 42.\n</think>\n\nThe answer is \\boxed{42}.")
    answer = reasoning.ask(w, "r1", "What is 7 times 6?", prompt_opened=True)
    assert [body for _, body in api.bodies] == [
        {
            "messages": [{"role": "user", "content": "What is 7 times 6?"}],
            "max_tokens": reasoning.RECOMMENDED_MAX_TOKENS,
            "temperature": reasoning.RECOMMENDED_TEMPERATURE,
        }
    ]
    assert answer.reasoning == "Okay, 7 times 6.\n7*6 = 42."
    assert answer.answer == "The answer is \\boxed{42}."
    assert answer.complete and answer.finish_reason == "stop"
    assert answer.summary()["completion_tokens"] == 99
    assert "answer:\nThe answer is" in answer.report()


def test_a_reply_cut_off_mid_thought_has_no_answer(r1):
    w, _ = r1("Let me think. First, 7 times 6 is", finish_reason="length")
    cut = reasoning.ask(w, "r1", "What is 7 times 6?", max_tokens=8, prompt_opened=True)
    assert cut.reasoning == "Let me think. First, 7 times 6 is"
    assert cut.answer == "" and cut.complete is False
    assert "raise max_tokens" in cut.report()
    # The same text from a template that did not open <think> is a (short) answer.
    plain = reasoning.ask(w, "r1", "What is 7 times 6?", max_tokens=8)
    assert plain.answer == "Let me think. First, 7 times 6 is" and plain.reasoning == ""


def test_ask_checks_its_arguments_before_calling(r1):
    w, api = r1("x")
    with pytest.raises(QueryError, match="temperature=3"):
        reasoning.ask(w, "r1", "Hi", temperature=3)
    with pytest.raises(QueryError, match="is empty"):
        reasoning.ask(w, "r1", "")
    assert api.bodies == []


def test_summary_cuts_long_texts_for_job_task_values():
    long = reasoning.ReasonedAnswer("r" * 10_000, "a" * 5, True, "stop")
    summary = long.summary(limit=100)
    assert summary["reasoning"] == "r" * 100 + "…" and summary["reasoning_chars"] == 10_000
    assert summary["answer"] == "aaaaa"
