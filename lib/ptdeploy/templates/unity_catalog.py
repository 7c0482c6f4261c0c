"""The Unity Catalog template's steps: resolve a model already in Unity Catalog (a
``system.ai`` model or a Marketplace install), check it, and smoke-test its endpoint in the
API its task fixes. The rules and the versions are ``catalog``'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ptdeploy import targets
from ptdeploy.errors import NotOptimizableError
from ptdeploy.llm_tasks import TASK_CHAT, TASK_COMPLETIONS, TASK_EMBEDDINGS, TASKS
from ptdeploy.models import registry
from ptdeploy.models.catalog import (
    LOCAL_SEEDS,
    check_system_ai_rules,
    full_name,
    model_task,
    resolve_version,
    seed_system_ai,
)
from ptdeploy.serving import optimization, query
from ptdeploy.templates import embeddings
from ptdeploy.templates.notebook import ALL_STEPS, REGISTER_TASK, get_task_value, set_task_values

if TYPE_CHECKING:
    from databricks.sdk import WorkspaceClient

    from ptdeploy.templates.parameters import Params


@dataclass(frozen=True)
class CatalogModel:
    """A registered version chosen for deployment, checked."""

    name: str
    version: str
    task: str
    info: optimization.OptimizationInfo
    description: str = ""

    @property
    def registered(self) -> registry.RegisteredVersion:
        """In the shape ``flow.deploy`` takes."""
        uri = f"models:/{self.name}/{self.version}"
        return registry.RegisteredVersion(self.name, self.version, None, uri, uri)

    def describe(self) -> str:
        text = f"{self.name} version {self.version} | task {self.task} | {self.info.describe()}"
        return text + (f"\n{self.description}" if self.description else "")


def _description(name: str) -> str:
    import mlflow

    try:
        return mlflow.MlflowClient().get_registered_model(name).description or ""
    except Exception:
        return ""


def resolve(p: Params, w: WorkspaceClient) -> CatalogModel:
    """Name, version, task and eligibility of the model to deploy (the job's register task).

    The ``system.ai`` rules are checked first (a name is enough); on the local target the
    model is seeded if it is one of the local ``system.ai`` seeds; the version is the one
    asked for, the one the job's register task handed over, or the latest.
    """
    name = full_name(p.catalog, p.schema, p.model_name)
    check_system_ai_rules(name)
    if targets.Target(p.target) is targets.Target.LOCAL and name in LOCAL_SEEDS:
        seed_system_ai(only=[name])
    register_step = p.get("steps", ALL_STEPS) in (ALL_STEPS, REGISTER_TASK)
    asked = p.get("model_version")
    if not register_step and asked is None:
        asked = get_task_value(REGISTER_TASK, "model_version", None) or None
    version = resolve_version(name, asked, target=p.target, w=w)
    info = optimization.optimizable_info(w, name, version)
    task = model_task(name, version, info)
    if register_step:
        set_task_values({"model_name": name, "model_version": version, "task": task})
    model = CatalogModel(name, version, task, info, _description(name))
    print(model.describe())
    return model


# ------------------------------------------------------------------ smoke test


@dataclass(frozen=True)
class SmokeAnswer:
    """The endpoint's answer to the smoke-test prompt, whatever the task."""

    task: str
    prompt: str
    text: str | None = None  # completions and chat
    embeddings: embeddings.EmbeddingCheck | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def report(self) -> str:
        if self.embeddings is not None:
            return self.embeddings.report()
        return f"{self.task}: {self.prompt!r} -> {self.text!r}"

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"task": self.task, "sample_prompt": self.prompt}
        if self.embeddings is not None:
            out.update(self.embeddings.summary())
        else:
            out["sample_answer"] = self.text
        out.update(self.details)
        return out


def smoke_query(
    w: WorkspaceClient, endpoint: str, task: str, prompt: str, max_tokens: int
) -> SmokeAnswer:
    """Query ``endpoint`` in the API its task fixes: a completion, a chat reply, or the
    embeddings of ``prompt`` next to the sample sentences."""
    if task == TASK_COMPLETIONS:
        done = query.complete(w, endpoint, prompt, max_tokens=max_tokens)
        return SmokeAnswer(task, prompt, text=done.text, details={"usage": _usage(done.usage)})
    if task == TASK_CHAT:
        reply = query.chat(
            w, endpoint, [{"role": "user", "content": prompt}], max_tokens=max_tokens
        )
        return SmokeAnswer(task, prompt, text=reply.content, details={"usage": _usage(reply.usage)})
    if task == TASK_EMBEDDINGS:
        sentences = [prompt, *embeddings.SAMPLE_SENTENCES]
        check = embeddings.query_sample(w, endpoint, sentences, normalize=False)
        return SmokeAnswer(task, prompt, embeddings=check)
    raise NotOptimizableError(f"task {task!r} is not one of {', '.join(TASKS)}.")


def _usage(usage: query.Usage | None) -> dict[str, Any] | None:
    return None if usage is None else dict(usage.__dict__)


# ------------------------------------------------------------- notebook steps


def smoke_test_step(p: Params, w: WorkspaceClient, model: CatalogModel) -> Any:
    """The smoke-test step: query the endpoint the way the model's task takes it; the
    champion alias moves only if it passes."""
    from ptdeploy.templates import flow

    return flow.smoke_test_step(
        p,
        w,
        model.registered,
        lambda: smoke_query(w, p.endpoint_name, model.task, p.prompt, p.max_tokens),
    )
