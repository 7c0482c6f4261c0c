"""The Databricks bundle: generated from parameters/*/databricks.yaml, committed up to date,
and every job parameter declared by its notebook."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from papermill.inspection import inspect_notebook
from ptdeploy import cli
from ptdeploy.errors import ParameterError
from ptdeploy.templates import bundle

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p.stem for p in (REPO / "notebooks").glob("*.ipynb"))
# Deployment templates run as register -> deploy -> smoke_test; others (the load test) as one task.
CHAINED = [
    n for n in NOTEBOOKS if "steps" in inspect_notebook(str(REPO / "notebooks" / f"{n}.ipynb"))
]
SINGLE = [n for n in NOTEBOOKS if n not in CHAINED]


@pytest.fixture
def tmp_repo(tmp_path):
    """The files the bundle is generated from, copied: tests edit them freely."""
    for name in ("notebooks", "parameters", "resources"):
        shutil.copytree(REPO / name, tmp_path / name)
    for name in ("requirements.txt", "databricks.yml", "requirements-databricks.txt"):
        shutil.copy(REPO / name, tmp_path / name)
    return tmp_path


def _job(root: Path, notebook: str) -> dict:
    data = yaml.safe_load((root / "resources" / f"{notebook}.job.yml").read_text())
    return data["resources"]["jobs"][notebook]


def test_committed_bundle_is_up_to_date():
    assert bundle.stale(REPO) == [], "run `ptdeploy bundle` and commit the result"


def test_every_template_has_a_job_and_every_job_a_template():
    jobs = sorted(p.name.removesuffix(".job.yml") for p in (REPO / "resources").glob("*.job.yml"))
    assert jobs == NOTEBOOKS


def test_the_deployment_templates_are_chained():
    assert {"llama_completions", "gte_embeddings", "bge_embeddings"} <= set(CHAINED)
    assert {"deepseek_r1_distill_llama", "deploy_from_unity_catalog"} <= set(CHAINED)


@pytest.mark.parametrize("notebook", SINGLE)
def test_a_notebook_without_steps_is_one_task(notebook):
    job = _job(REPO, notebook)
    (task,) = job["tasks"]
    assert task["task_key"] == bundle.SINGLE_TASK
    params = bundle.task_parameters(job, task)
    assert "steps" not in params
    assert list(params) == list(inspect_notebook(str(REPO / "notebooks" / f"{notebook}.ipynb")))


@pytest.mark.parametrize("notebook", CHAINED)
def test_job_runs_the_notebook_as_four_chained_tasks(notebook):
    job = _job(REPO, notebook)
    tasks = job["tasks"]
    assert [t["task_key"] for t in tasks] == ["register", "deploy", "smoke_test", "promote"]
    assert "depends_on" not in tasks[0]
    assert tasks[1]["depends_on"] == [{"task_key": "register"}]
    assert tasks[2]["depends_on"] == [{"task_key": "deploy"}]
    assert tasks[3]["depends_on"] == [{"task_key": "smoke_test"}], "promote only what passed"
    expected = yaml.safe_load((REPO / "parameters" / notebook / "databricks.yaml").read_text())
    declared = list(inspect_notebook(str(REPO / "notebooks" / f"{notebook}.ipynb")))
    for task in tasks:
        nb_task = task["notebook_task"]
        assert nb_task["notebook_path"] == f"../notebooks/{notebook}.ipynb"
        assert nb_task["base_parameters"] == {"steps": task["task_key"]}, "a task sets its step"
        params = bundle.task_parameters(job, task)
        assert set(params) == set(declared), "every declared parameter"
        assert params["steps"] == task["task_key"]
        assert all(isinstance(v, str) for v in params.values()), "widgets take strings"
        for key, value in expected.items():
            if key != "steps":
                want = str(value).lower() if isinstance(value, bool) else str(value)
                assert params[key] == want, f"{key} differs from databricks.yaml"
        assert params["target"] == "databricks"
        assert task["libraries"][0] == {"whl": "../dist/*.whl"}
        assert task["job_cluster_key"] == job["job_clusters"][0]["job_cluster_key"]
    wait = int(expected["wait_timeout_minutes"])
    assert tasks[1]["timeout_seconds"] >= wait * 60
    assert tasks[3]["timeout_seconds"] >= wait * 60, "promoting a canary waits for an update"
    cluster = job["job_clusters"][0]["new_cluster"]
    assert cluster["spark_version"] == "${var.spark_version}"
    assert cluster["data_security_mode"] == "SINGLE_USER"
    assert job["max_concurrent_runs"] == 1


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_committed_job_files_pass_the_check(notebook):
    bundle.check_job_file(REPO / "resources" / f"{notebook}.job.yml", REPO)


def test_databricks_yml_builds_the_wheel_and_includes_the_jobs():
    data = yaml.safe_load((REPO / "databricks.yml").read_text())
    assert data["include"] == ["resources/*.job.yml"]
    artifact = next(iter(data["artifacts"].values()))
    assert artifact["type"] == "whl" and artifact["path"] == "."
    assert "wheel" in artifact["build"] and "dist" in artifact["build"]
    assert "ml" in data["variables"]["spark_version"]["default"]
    assert data["targets"]["dev"]["mode"] == "development"


def test_pinned_packages_come_from_requirements():
    pins = bundle.pinned_packages(REPO)
    requirements = (REPO / "requirements.txt").read_text()
    assert [p.split("==")[0] for p in pins] == list(bundle.JOB_PYPI_PACKAGES)
    for pin in pins:
        assert pin in requirements
    assert not any(p.startswith("torch==") for p in pins), "torch stays the runtime's build"


def test_a_job_parameter_the_notebook_does_not_declare_is_refused(tmp_repo):
    path = tmp_repo / "parameters" / "gte_embeddings" / "databricks.yaml"
    path.write_text(path.read_text() + "max_tokenz: 12\n")
    before = (tmp_repo / "resources" / "gte_embeddings.job.yml").read_text()
    with pytest.raises(ParameterError) as err:
        bundle.write(tmp_repo)
    message = str(err.value)
    assert "'max_tokenz'" in message and "gte_embeddings.ipynb" in message
    assert "parameters/gte_embeddings/databricks.yaml" in message
    assert "model_source" in message  # what it declares
    assert (tmp_repo / "resources" / "gte_embeddings.job.yml").read_text() == before


def test_a_hand_edited_job_with_an_undeclared_parameter_is_refused(tmp_repo):
    path = tmp_repo / "resources" / "deepseek_r1_distill_llama.job.yml"
    data = yaml.safe_load(path.read_text())
    task = data["resources"]["jobs"]["deepseek_r1_distill_llama"]["tasks"][1]
    task["notebook_task"]["base_parameters"]["top_p"] = "0.95"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ParameterError) as err:
        bundle.check_job_file(path, tmp_repo)
    message = str(err.value)
    assert "task 'deploy'" in message and "'top_p'" in message
    assert "deepseek_r1_distill_llama.ipynb" in message
    assert bundle.stale(tmp_repo) == [Path("resources/deepseek_r1_distill_llama.job.yml")]


def test_a_missing_or_mismatched_step_is_refused(tmp_repo):
    path = tmp_repo / "resources" / "llama_completions.job.yml"
    data = yaml.safe_load(path.read_text())
    data["resources"]["jobs"]["llama_completions"]["tasks"][2]["notebook_task"]["base_parameters"][
        "steps"
    ] = "deploy"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(
        ParameterError, match="steps='deploy' must name the task \\('smoke_test'\\)"
    ):
        bundle.check_job_file(path, tmp_repo)


def test_job_parameters_are_validated_by_the_spec(tmp_repo):
    path = tmp_repo / "parameters" / "bge_embeddings" / "databricks.yaml"
    path.write_text(path.read_text().replace("max_chunks: 1", "max_chunks: lots"))
    with pytest.raises(ParameterError, match="parameter 'max_chunks': invalid value 'lots'"):
        bundle.render(tmp_repo)


def test_a_job_must_target_databricks(tmp_repo):
    path = tmp_repo / "parameters" / "bge_embeddings" / "databricks.yaml"
    path.write_text(path.read_text().replace("target: databricks", "target: local"))
    with pytest.raises(ParameterError, match="target='local'"):
        bundle.render(tmp_repo)


def test_cli_writes_then_checks(tmp_repo, monkeypatch, capsys):
    monkeypatch.setattr(bundle, "project_root", lambda: tmp_repo)
    (tmp_repo / "resources" / "bge_embeddings.job.yml").unlink()
    (tmp_repo / "resources" / "old_template.job.yml").write_text("resources: {jobs: {}}\n")
    assert cli.main(["bundle", "--check"]) == 2  # the leftover file has no jobs
    (tmp_repo / "resources" / "old_template.job.yml").unlink()
    assert cli.main(["bundle", "--check"]) == 1
    assert "resources/bge_embeddings.job.yml" in capsys.readouterr().err
    assert cli.main(["bundle"]) == 0
    assert cli.main(["bundle", "--check"]) == 0
    assert "up to date" in capsys.readouterr().out
