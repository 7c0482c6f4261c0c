"""``ptdeploy job run``: the job as resources/<template>.job.yml declares it, rehearsed offline."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from ptdeploy import cli
from ptdeploy.errors import JobDefinitionError, ParameterError
from ptdeploy.templates import job

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = sorted(p.name.removesuffix(".job.yml") for p in (REPO / "resources").glob("*.job.yml"))


def _task(key, *deps, run_if=None):
    task = {"task_key": key, "depends_on": [{"task_key": d} for d in deps]}
    if run_if:
        task["run_if"] = run_if
    return task


def test_tasks_run_after_what_they_depend_on():
    tasks = [_task("smoke_test", "deploy"), _task("register"), _task("deploy", "register")]
    assert [t["task_key"] for t in job.task_order(tasks)] == ["register", "deploy", "smoke_test"]


def test_a_cycle_or_an_unknown_dependency_is_refused_before_anything_runs():
    with pytest.raises(JobDefinitionError, match="cycle"):
        job.task_order([_task("a", "b"), _task("b", "a")])
    with pytest.raises(JobDefinitionError, match="'regster', which is not a task"):
        job.task_order([_task("deploy", "regster")])


def test_run_if_follows_databricks():
    states = {"a": job.FAILED, "b": job.SUCCESS}
    assert job.run_if_status(_task("c", "a"), states) == job.UPSTREAM_FAILED
    assert job.run_if_status(_task("c", "b"), states) is None
    assert job.run_if_status(_task("c", "a", "b", run_if="AT_LEAST_ONE_SUCCESS"), states) is None
    assert job.run_if_status(_task("c", "a", run_if="ALL_DONE"), states) is None
    assert job.run_if_status(_task("c", "b", run_if="AT_LEAST_ONE_FAILED"), states) == "EXCLUDED"
    assert job.run_if_status(_task("c", "a", run_if="ALL_FAILED"), states) is None
    # a skipped (upstream failed) task counts as failed for its own dependants
    assert job.run_if_status(_task("d", "c"), {"c": job.UPSTREAM_FAILED}) == job.UPSTREAM_FAILED
    with pytest.raises(JobDefinitionError, match="run_if 'SOMETIMES'"):
        job.run_if_status(_task("c", "b", run_if="SOMETIMES"), states)


def test_bundle_variables_resolve_and_an_empty_one_is_named():
    variables = job.bundle_variables(REPO, {"node_type_id": "m5.large"})
    assert job.substitute("${var.node_type_id}", variables, "x") == "m5.large"
    with pytest.raises(JobDefinitionError, match="'service_principal' has no value; pass --var"):
        job.substitute({"run_as": "${var.service_principal}"}, variables, "targets.prod")
    with pytest.raises(JobDefinitionError, match="no such variable"):
        job.bundle_variables(REPO, {"node_typ_id": "x"})


@pytest.mark.parametrize("template", TEMPLATES)
def test_local_rehearsal_parameters_are_the_job_parameters_with_local_values(template):
    definition = job.load_job(template, REPO)
    params = job.local_job_parameters(template, definition, REPO, "local", {})
    assert list(params) == [p["name"] for p in definition["parameters"]]
    assert params["target"] == "local"
    assert all(isinstance(v, str) for v in params.values()), "widgets take strings"


def test_bad_overrides_fail_before_any_kernel():
    definition = job.load_job("llama_completions", REPO)
    with pytest.raises(ParameterError, match="did you mean 'max_tokens'"):
        job.local_job_parameters("llama_completions", definition, REPO, "local", {"max_tokns": "5"})
    with pytest.raises(ParameterError, match="'max_tokens'"):
        job.local_job_parameters(
            "llama_completions", definition, REPO, "local", {"max_tokens": "x"}
        )
    with pytest.raises(JobDefinitionError, match="each task sets its own step"):
        job.local_job_parameters("llama_completions", definition, REPO, "local", {"steps": "all"})


def test_the_cli_refuses_an_unknown_job_and_points_databricks_runs_to_the_cli(capsys, tmp_path):
    assert cli.main(["job", "run", "nope", "--out", str(tmp_path)]) == 2
    assert "no job file" in capsys.readouterr().err
    assert cli.main(["job", "run", "llama_completions", "--target", "databricks"]) == 2
    assert "databricks bundle run llama_completions" in capsys.readouterr().err


def test_steps_as_a_job_parameter_is_refused(tmp_path):
    from ptdeploy.templates import bundle

    for name in ("notebooks", "resources"):
        shutil.copytree(REPO / name, tmp_path / name)
    path = tmp_path / "resources" / "gte_embeddings.job.yml"
    text = path.read_text().replace(
        "      parameters:\n", "      parameters:\n      - name: steps\n        default: all\n", 1
    )
    path.write_text(text)
    with pytest.raises(ParameterError, match="'steps' is a job parameter"):
        bundle.check_job_file(path, tmp_path)


def test_a_task_that_is_not_a_notebook_fails_the_rehearsal_before_any_task_runs(tmp_path):
    root = tmp_path / "repo"
    for name in ("notebooks", "resources", "parameters"):
        shutil.copytree(REPO / name, root / name)
    shutil.copy(REPO / "databricks.yml", root / "databricks.yml")
    path = root / "resources" / "gte_embeddings.job.yml"
    text = path.read_text()
    last = text.rindex("notebook_task:")
    path.write_text(text[:last] + "spark_python_task:" + text[last + len("notebook_task:") :])
    with pytest.raises(JobDefinitionError, match="only notebook tasks can be rehearsed"):
        job.rehearse_job("gte_embeddings", out_dir=tmp_path / "out", root=root)
    assert not list((tmp_path / "out").rglob("*.ipynb")), "no task ran"
