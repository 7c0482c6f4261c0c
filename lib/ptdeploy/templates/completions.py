"""The Llama template's own steps: register with a registry smoke test, then sample queries
that follow the endpoint's task.

The template documents ``task`` as ``llm/v1/completions`` or ``llm/v1/chat``; a chat
endpoint takes ``messages``, not ``prompt``, so the smoke test asks the endpoint which task
it serves and queries it that way (``query.complete`` or ``query.chat``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ptdeploy.capacity.loadtest import Task, detect_task
from ptdeploy.models import registry, smoke
from ptdeploy.serving import query
from ptdeploy.templates import flow

if TYPE_CHECKING:
    from databricks.sdk import WorkspaceClient

    from ptdeploy.templates.parameters import Params

# Two more questions the smoke test asks, to show a batch of answers.
SAMPLE_PROMPTS = ("What is Apache Spark?", "Provisioned throughput is")


@dataclass(frozen=True)
class SampleAnswers:
    """The endpoint's answers to the template's prompt and to ``SAMPLE_PROMPTS``."""

    task: Task
    prompt: str
    text: str
    others: tuple[str, ...]
    usage: query.Usage | None
    finish_reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def report(self) -> str:
        shown = repr(self.prompt + self.text) if self.task is Task.COMPLETIONS else repr(self.text)
        lines = [f"{self.task.short}: {shown} | {self.usage}"]
        lines += [f"- {t!r}" for t in self.others]
        return "\n".join(lines)

    def summary(self) -> dict[str, Any]:
        return {
            "task": self.task.value,
            "sample_prompt": self.prompt,
            "sample_completion": self.text,
        }


def register_step(p: Params) -> tuple[registry.RegisteredVersion, smoke.SmokeResult | None]:
    """The register step: load, log with ``p.task``, register (challenger), and complete
    the prompt from the registry before any endpoint exists. Outside this step: the
    version the register task handed over (or the challenger's)."""
    if not flow.runs(p, flow.REGISTER_TASK):
        return flow.registered_version(p), None
    loaded = flow.load(p)
    registered = flow.log_and_register(p, loaded)
    check = smoke.complete_from_registry(registered.model_uri, p.prompt, max_tokens=p.max_tokens)
    print("registry smoke test:", repr(p.prompt + check.text))
    return registered, check


def sample(p: Params, w: WorkspaceClient) -> SampleAnswers:
    """Ask the endpoint the template's prompt (and ``SAMPLE_PROMPTS``) the way its task
    takes them; the answer must not be empty and must contain ``p.expect`` when set."""
    task = detect_task(w, p.endpoint_name)
    if task is Task.CHAT:
        answers = [
            query.chat(w, p.endpoint_name, [{"role": "user", "content": text}], p.max_tokens)
            for text in (p.prompt, *SAMPLE_PROMPTS)
        ]
        first = answers[0]
        result = SampleAnswers(
            task,
            p.prompt,
            first.message.content,
            tuple(a.message.content for a in answers[1:]),
            first.usage,
            first.finish_reason,
        )
    else:
        first = query.complete(w, p.endpoint_name, p.prompt, max_tokens=p.max_tokens)
        batch = query.complete(w, p.endpoint_name, list(SAMPLE_PROMPTS), max_tokens=p.max_tokens)
        result = SampleAnswers(
            task,
            p.prompt,
            first.texts[0],
            tuple(batch.texts),
            first.usage,
            first.finish_reasons[0],
        )
    flow.expect_text(p, result.text)
    return result


def smoke_test_step(
    p: Params, w: WorkspaceClient, registered: registry.RegisteredVersion
) -> SampleAnswers | None:
    """The smoke-test step: sample the endpoint; the champion alias moves only if it passes."""
    return flow.smoke_test_step(p, w, registered, lambda: sample(p, w))
