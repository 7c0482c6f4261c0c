"""The Llama template's smoke test follows the endpoint's task (completions or chat)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import fakes
import pytest
from databricks.sdk import WorkspaceClient
from ptdeploy.capacity.loadtest import Task
from ptdeploy.errors import PromotionError
from ptdeploy.templates import completions
from ptdeploy.workspace.schemas import parse_request


class EchoWorker(fakes.ReadyWorker):
    """Validates as the real worker does; answers with the task's shape."""

    async def infer(self, body: dict[str, Any]) -> dict[str, Any]:
        request = parse_request(self.task, body)  # a chat endpoint refuses a prompt
        usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        if self.task == "llm/v1/chat":
            said = request.messages[-1].text
            message = {"role": "assistant", "content": f"Paris, said to {said!r}"}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            return {"object": "chat.completion", "choices": [choice], "usage": usage}
        choices = [
            {"index": i, "text": " Paris", "finish_reason": "length"}
            for i, _ in enumerate(request.prompts)
        ]
        return {"object": "text_completion", "choices": choices, "usage": usage}


@pytest.fixture()
def w(local_client) -> WorkspaceClient:
    chat_or_completions = "llm/v1/{}".format
    client = local_client(
        EchoWorker,
        fakes.Catalog(task_of=lambda name: chat_or_completions(name.rsplit(".", 1)[-1])),
    )
    fakes.create_endpoints(
        client, {name: f"main.default.{name}" for name in ("chat", "completions")}
    )
    return client


def params(endpoint: str, expect: str = "") -> Any:
    values = {"endpoint_name": endpoint, "prompt": "The capital of France is", "max_tokens": 4}
    values["expect"] = expect
    return SimpleNamespace(**values, get=lambda key, default=None: values.get(key, default))


@pytest.mark.parametrize(
    ("endpoint", "task"), [("completions", Task.COMPLETIONS), ("chat", Task.CHAT)]
)
def test_the_smoke_test_queries_the_endpoint_the_way_its_task_takes_it(w, endpoint, task):
    answers = completions.sample(params(endpoint, expect="paris"), w)
    assert answers.task is task
    assert "Paris" in answers.text and len(answers.others) == len(completions.SAMPLE_PROMPTS)
    assert answers.summary()["task"] == task.value
    if task is Task.CHAT:  # the prompt went as a user message
        assert "The capital of France is" in answers.text


def test_an_answer_without_the_expected_text_fails_the_smoke_test(w):
    with pytest.raises(PromotionError, match="expected 'Berlin'"):
        completions.sample(params("chat", expect="Berlin"), w)
