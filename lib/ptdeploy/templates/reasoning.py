"""Reasoning chat models (DeepSeek-R1 and its distilled Llama): prompts, recommended
settings, and the answer told apart from its ``<think>…</think>`` reasoning.

DeepSeek's usage recommendations for the R1 series (model card):

- temperature 0.5–0.7, 0.6 recommended (greedy decoding can repeat endlessly), top-p 0.95;
- no system prompt: every instruction goes in the user message;
- for maths, ask to "reason step by step, and put your final answer within \\boxed{}";
- the model should start its answer with ``<think>\\n``; the R1-distill chat templates
  end the generation prompt with it, so the *output* only closes the block. Whether a
  model's template does so is recorded on the registered version (a model version tag),
  so the smoke-test task of a job, which never loads the tokenizer, still reads a
  reasoning cut short by ``max_tokens`` as reasoning rather than as an answer.

Reasoning is long: thousands of tokens before the answer. ``max_tokens`` must leave room
for both, or the answer is empty (``finish_reason='length'``, ``complete=False``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ptdeploy.errors import QueryError
from ptdeploy.llm_tasks import TASK_CHAT
from ptdeploy.models import model_logging
from ptdeploy.serving import query

if TYPE_CHECKING:
    from databricks.sdk import WorkspaceClient

    from ptdeploy.models.registry import RegisteredVersion

TASK = TASK_CHAT
RECOMMENDED_TEMPERATURE = 0.6
RECOMMENDED_TOP_P = 0.95
RECOMMENDED_MAX_TOKENS = 4096
MATH_DIRECTIVE = "Please reason step by step, and put your final answer within \\boxed{}."
# Texts kept in a run summary (job task values are limited to a few tens of KB each).
SUMMARY_CHARS = 4000


def user_messages(prompt: str) -> list[dict[str, str]]:
    """The conversation DeepSeek recommends: one user message, no system prompt."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise QueryError(f"prompt={prompt!r} is empty: give the question to ask.")
    return [{"role": "user", "content": prompt}]


def render_prompt(tokenizer: Any, prompt: str) -> str:
    """The text the model actually sees for ``prompt``: its chat template applied with
    the generation prompt, as the serving endpoint will apply it."""
    if not getattr(tokenizer, "chat_template", None):
        raise QueryError(
            "the tokenizer has no chat template: a chat endpoint (llm/v1/chat) needs one. "
            "Use the Instruct/chat variant of the model."
        )
    return tokenizer.apply_chat_template(
        user_messages(prompt), tokenize=False, add_generation_prompt=True
    )


@dataclass(frozen=True)
class ReasonedAnswer:
    """A reasoning model's reply: the reasoning and the answer, told apart."""

    reasoning: str
    answer: str
    complete: bool  # False: cut off mid-reasoning (raise max_tokens)
    finish_reason: str | None
    usage: query.Usage | None = None

    def report(self, width: int = 600) -> str:
        def cut(text: str) -> str:
            return text if len(text) <= width else text[:width] + f"… [{len(text)} chars]"

        lines = [
            f"reasoning ({len(self.reasoning)} chars):",
            cut(self.reasoning) or "(none)",
            "",
            "answer:",
            cut(self.answer) or "(none)",
        ]
        if not self.complete:
            lines.append(
                f"\nthe reasoning was cut off (finish_reason={self.finish_reason!r}): raise "
                "max_tokens so the model can finish thinking and answer."
            )
        if self.usage and self.usage.completion_tokens is not None:
            lines.append(f"\nusage: {self.usage.completion_tokens} generated tokens")
        return "\n".join(lines)

    def summary(self, limit: int = SUMMARY_CHARS) -> dict[str, Any]:
        """Plain values for ``flow.finish``. Long texts are cut to ``limit`` characters: on
        Databricks the summary becomes job task values, which have a size limit."""

        def cut(text: str) -> str:
            return text if len(text) <= limit else text[:limit] + "…"

        return {
            "reasoning": cut(self.reasoning),
            "reasoning_chars": len(self.reasoning),
            "answer": cut(self.answer),
            "reasoning_complete": self.complete,
            "finish_reason": self.finish_reason,
            "completion_tokens": self.usage.completion_tokens if self.usage else None,
        }


def ask(
    w: WorkspaceClient,
    endpoint: str,
    prompt: str,
    *,
    max_tokens: int = RECOMMENDED_MAX_TOKENS,
    temperature: float = RECOMMENDED_TEMPERATURE,
    prompt_opened: bool = False,
) -> ReasonedAnswer:
    """Ask a chat endpoint ``prompt`` as DeepSeek recommends; split reasoning from answer.

    ``prompt_opened``: the template opened ``<think>`` (``recorded_opens_think``), so an
    output without any tag is unfinished reasoning, not an answer.
    """
    result = query.chat(
        w, endpoint, user_messages(prompt), max_tokens=max_tokens, temperature=temperature
    )
    split = result.reasoned(prompt_opened=prompt_opened)
    return ReasonedAnswer(
        reasoning=split.reasoning,
        answer=split.answer,
        complete=split.complete,
        finish_reason=result.finish_reason,
        usage=result.usage,
    )


# ------------------------------------------------------------- notebook steps (DeepSeek)


def register_step(p: Any) -> RegisteredVersion:
    """The register step: load, log for ``llm/v1/chat``, register (challenger), record
    whether the chat template opens ``<think>``, and show what the model sees. Outside
    this step: the version the register task handed over."""
    from ptdeploy.templates import flow

    if not flow.runs(p, flow.REGISTER_TASK):
        return flow.registered_version(p)
    loaded = flow.load(p)
    registered = flow.log_and_register(p, loaded, task=TASK)
    seen = render_prompt(loaded.tokenizer, p.prompt)  # refuses a model without a chat template
    opens_think = model_logging.record_template(registered, loaded.tokenizer)
    print("the model sees:\n" + seen)
    print("chat template opens <think>:", opens_think)
    return registered


def smoke_test_step(
    p: Any, w: WorkspaceClient, registered: RegisteredVersion
) -> ReasonedAnswer | None:
    """The smoke-test step: ask the prompt, split reasoning from answer; promotion only
    if it passes."""
    from ptdeploy.templates import flow

    return flow.smoke_test_step(
        p,
        w,
        registered,
        lambda: ask(
            w,
            p.endpoint_name,
            p.prompt,
            max_tokens=p.max_tokens,
            temperature=p.temperature,
            prompt_opened=model_logging.recorded_opens_think(registered.name, registered.version),
        ),
    )
