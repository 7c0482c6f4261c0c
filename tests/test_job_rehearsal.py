"""Every template's job, rehearsed offline as its resources/<template>.job.yml declares it:
tasks in order, each in its own kernel, parameters through the offline dbutils widgets,
task values handed over, promotion only of what passed its smoke test (slow: kernels)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import nbformat
import pytest
from ptdeploy import targets
from ptdeploy.models import registry
from ptdeploy.templates import job, specs
from ptdeploy.templates.notebook import read_summary

REPO = Path(__file__).resolve().parents[1]

# Small models and short loads keep the rehearsal affordable on two cores. The smoke test
# of each job is also where the template's own answer is checked (the same notebooks run
# headless in tests/test_notebooks.py only where that covers something a job does not).
# load_test_endpoint's job (one task) is rehearsed by tests/test_load_test_notebook.py.
CHEAP = {
    "bge_embeddings": {},
    "gte_embeddings": {},
    "deepseek_r1_distill_llama": {"model_source": "tiny-llama", "max_tokens": "8"},
    "deploy_from_unity_catalog": {
        "model_name": "all_minilm_l6_v2",
        "endpoint_name": "uc-minilm",
        "prompt": "a kitten sleeps on a rug",
    },
}


def summary_of(task: job.TaskRun) -> dict:
    """The summary a task's notebook showed (what ``ptdeploy run`` reads back)."""
    summary = read_summary(nbformat.read(task.output, as_version=4))
    assert summary is not None, f"{task.task_key} showed no summary"
    return summary


def smoke_task(run: job.JobRun) -> job.TaskRun:
    """The smoke-test task: its summary carries the endpoint's answers."""
    return next(t for t in run.tasks if t.task_key == "smoke_test")


def check_bge(run: job.JobRun) -> None:
    s = summary_of(smoke_task(run))
    assert s["model_type"] == "bge-large" and s["normalized_client_side"] is False
    assert s["nearest"]["a kitten rests on a rug"] == "a cat sits on the mat"
    assert s["embedding_dim"] == 384


def check_gte(run: job.JobRun) -> None:
    s = summary_of(smoke_task(run))
    cat, kitten, stocks = (
        "a cat sits on the mat",
        "a kitten rests on a rug",
        "stock prices fell sharply",
    )
    assert s["nearest"][cat] == kitten and s["nearest"][kitten] == cat
    assert s["nearest"][stocks] == "the stock market dropped today"
    assert s["model_type"] == "gte-large" and s["served_normalized"] is True


def check_deepseek(run: job.JobRun) -> None:
    s = summary_of(smoke_task(run))
    assert s["registered_model"] == "main.default.deepseek_r1_distill_llama"
    assert s["completion_tokens"] == 8 and s["finish_reason"] == "length"
    # ChatML does not open <think>: the reply is an answer, without reasoning.
    assert s["reasoning"] == "" and s["reasoning_complete"] is True and s["answer"]
    register_output = run.tasks[0].output.read_text()
    assert "<|im_start|>user" in register_output, "the notebook shows the prompt the model sees"


def check_unity_catalog(run: job.JobRun) -> None:
    s = summary_of(smoke_task(run))
    assert s["registered_model"] == "system.ai.all_minilm_l6_v2"
    assert s["version"] == "1" and s["task"] == "llm/v1/embeddings"
    assert s["embedding_dim"] == 384
    assert s["nearest"]["a kitten sleeps on a rug"] in (
        "a kitten rests on a rug",
        "a cat sits on the mat",
    )


CHECKS = {
    "bge_embeddings": check_bge,
    "gte_embeddings": check_gte,
    "deepseek_r1_distill_llama": check_deepseek,
    "deploy_from_unity_catalog": check_unity_catalog,
}


def rehearse(template: str, tmp_path: Path, **overrides: str) -> job.JobRun:
    return job.rehearse_job(template, overrides=overrides, out_dir=tmp_path, root=REPO)


@pytest.mark.slow
@pytest.mark.parametrize("template", sorted(CHEAP))
def test_the_job_runs_offline_task_by_task(template, tmp_path, ptdeploy_home):
    run = rehearse(template, tmp_path, **CHEAP[template])
    assert run.ok, run.table()
    definition = job.load_job(template, REPO)
    assert [t.task_key for t in run.tasks] == [t["task_key"] for t in definition["tasks"]]
    assert all(t.status == job.SUCCESS for t in run.tasks)
    if len(run.tasks) == 4:
        register, deploy, smoke, promote = run.tasks
        # the version travelled from register to the next tasks through task values
        assert deploy.task_values["version"] == register.task_values["model_version"]
        assert smoke.task_values["endpoint_served_versions"] == [deploy.task_values["version"]]
        if "alias" in specs.spec_for(template).names:  # the UC template moves no alias
            assert promote.task_values["champion_version"] == deploy.task_values["version"]
    CHECKS[template](run)


@pytest.mark.slow
def test_only_a_proven_version_becomes_champion(tmp_path, ptdeploy_home):
    first = rehearse("llama_completions", tmp_path, model_source="tiny-llama", max_tokens="4")
    assert first.ok, first.table()
    targets.configure_mlflow("local")
    name = "main.default.llama_completions"
    champion = registry.alias_version(name, "champion")
    assert champion == first.tasks[0].task_values["model_version"]

    # tiny-llama's random weights never say "Paris": this version fails its smoke test
    second = rehearse(
        "llama_completions", tmp_path, model_source="tiny-llama", max_tokens="4", expect="Paris"
    )
    statuses = {t.task_key: t.status for t in second.tasks}
    assert statuses == {
        "register": "SUCCESS",
        "deploy": "SUCCESS",
        "smoke_test": "FAILED",
        "promote": "UPSTREAM_FAILED",
    }
    assert not second.ok
    failed = second.tasks[2].detail
    assert "does not contain the expected 'Paris'" in failed
    assert f"rolled back to the previous version {champion}" in failed
    new = second.tasks[0].task_values["model_version"]
    assert registry.alias_version(name, "challenger") == new
    assert registry.alias_version(name, "champion") == champion, "champion did not move"
    w = targets.workspace_client("local")
    served = w.serving_endpoints.get("llama-completions").config.served_entities
    assert [e.entity_version for e in served] == [champion], "traffic is back on the champion"
    assert mlflow.MlflowClient().get_model_version(name, new).status == "READY"


@pytest.mark.slow
def test_a_failing_task_skips_its_dependants(tmp_path, ptdeploy_home):
    # a model name that does not exist: the register (resolve) task fails at once
    run = rehearse("deploy_from_unity_catalog", tmp_path, model_name="no_such_model")
    assert [t.status for t in run.tasks] == ["FAILED", *["UPSTREAM_FAILED"] * 3]
    assert "no_such_model" in run.tasks[0].detail
    assert "UPSTREAM_FAILED" in run.table() and "FAILED" in run.table()
