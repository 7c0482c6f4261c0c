"""Reasoning chat models: prompts as DeepSeek recommends, the chat template's <think>,
and replies split into reasoning and answer (the split itself: tests/test_query.py)."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
from ptdeploy import models, reasoning, registry, targets
from ptdeploy.errors import QueryError

# The shape of DeepSeek-R1-Distill-Llama's template: no system prompt needed, and the
# generation prompt opens the reasoning block.
R1_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}"
    "<｜User｜>{{ m['content'] }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<｜Assistant｜><think>\n{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer():
    return models.build_tiny_tokenizer()


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
    assert reasoning.template_opens_think(r1_tokenizer) is True
    assert reasoning.template_opens_think(tokenizer) is False


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
        assert reasoning.record_template(rv, r1_tokenizer) is True
        assert reasoning.recorded_opens_think(name, version) is True
    finally:
        reasoning.record_template(rv, models.build_tiny_tokenizer())
    assert reasoning.recorded_opens_think(name, version) is False
    assert reasoning.recorded_opens_think(name, "999") is False  # no such version: no tag


class FakeChatApi:
    """Answers /serving-endpoints/r1/invocations with a fixed assistant content."""

    def __init__(self, content: str, finish_reason: str = "stop") -> None:
        self.content, self.finish_reason = content, finish_reason
        self.bodies: list[dict] = []

    def do(self, method, path=None, body=None, **_):
        assert method == "POST" and path == "/serving-endpoints/r1/invocations"
        self.bodies.append(copy.deepcopy(body))
        return {
            "object": "chat.completion",
            "model": "r1",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": self.content},
                    "finish_reason": self.finish_reason,
                }
            ],
            "usage": {"prompt_tokens": 20, "completion_tokens": 99, "total_tokens": 119},
        }


def _client(api):
    return SimpleNamespace(api_client=api)


def test_ask_follows_the_recommendations_and_splits():
    api = FakeChatApi("Okay, 7 times 6.\n7*6 = 42.\n</think>\n\nThe answer is \\boxed{42}.")
    answer = reasoning.ask(_client(api), "r1", "What is 7 times 6?", prompt_opened=True)
    assert api.bodies == [
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


def test_a_reply_cut_off_mid_thought_has_no_answer():
    api = FakeChatApi("Let me think. First, 7 times 6 is", finish_reason="length")
    cut = reasoning.ask(_client(api), "r1", "What is 7 times 6?", max_tokens=8, prompt_opened=True)
    assert cut.reasoning == "Let me think. First, 7 times 6 is"
    assert cut.answer == "" and cut.complete is False
    assert "raise max_tokens" in cut.report()
    # The same text from a template that did not open <think> is a (short) answer.
    plain = reasoning.ask(_client(api), "r1", "What is 7 times 6?", max_tokens=8)
    assert plain.answer == "Let me think. First, 7 times 6 is" and plain.reasoning == ""


def test_ask_checks_its_arguments_before_calling():
    api = FakeChatApi("x")
    with pytest.raises(QueryError, match="temperature=3"):
        reasoning.ask(_client(api), "r1", "Hi", temperature=3)
    with pytest.raises(QueryError, match="is empty"):
        reasoning.ask(_client(api), "r1", "")
    assert api.bodies == []


def test_summary_cuts_long_texts_for_job_task_values():
    long = reasoning.ReasonedAnswer("r" * 10_000, "a" * 5, True, "stop")
    summary = long.summary(limit=100)
    assert summary["reasoning"] == "r" * 100 + "…" and summary["reasoning_chars"] == 10_000
    assert summary["answer"] == "aaaaa"
