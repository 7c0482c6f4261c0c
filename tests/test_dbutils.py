"""The offline dbutils behaves as Databricks documents it (each rule cited in the module)."""

from __future__ import annotations

import io
import json
import os
import stat
import sys

import pytest
from ptdeploy.errors import TaskValueError
from ptdeploy.templates import dbutils as offline
from ptdeploy.templates.notebook import get_task_value, set_task_values


def job_dbutils(tmp_path, task_key="deploy", parameters=None):
    ctx = offline.TaskContext(
        task_key=task_key,
        job_run_dir=str(tmp_path),
        task_keys=["register", "deploy", "smoke_test"],
        parameters=parameters or {},
    )
    return offline.OfflineDbutils(ctx)


def test_widgets_hold_strings_and_job_parameters_override_defaults(tmp_path):
    d = job_dbutils(tmp_path, parameters={"max_chunks": "2"})
    d.widgets.text("max_chunks", "1", "Max chunks")
    d.widgets.dropdown("target", "local", ["local", "databricks"])
    assert d.widgets.get("max_chunks") == "2"  # the job's value wins over the default
    assert d.widgets.get("target") == "local"
    assert d.widgets.getAll() == {"max_chunks": "2", "target": "local"}
    with pytest.raises(TypeError):
        d.widgets.text("n", 5)
    with pytest.raises(ValueError, match="not one of its choices"):
        d.widgets.dropdown("t", "x", ["a", "b"])
    with pytest.raises(offline.InputWidgetNotDefined):
        d.widgets.get("nope")


def test_task_values_outside_a_job_need_a_debug_value():
    d = offline.OfflineDbutils()
    with pytest.raises(TypeError, match="debugValue cannot be None"):
        d.jobs.taskValues.get(taskKey="register", key="model_version")
    assert d.jobs.taskValues.get("register", "model_version", debugValue="3") == "3"


def test_task_values_travel_between_tasks_of_a_run(tmp_path):
    job_dbutils(tmp_path, "register").jobs.taskValues.set("model_version", "4")
    deploy = job_dbutils(tmp_path, "deploy")
    assert deploy.jobs.taskValues.get("register", "model_version", debugValue="x") == "4"
    assert deploy.jobs.taskValues.get("register", "missing", default=7) == 7
    with pytest.raises(ValueError, match="set no task value"):
        deploy.jobs.taskValues.get("register", "missing")
    with pytest.raises(ValueError, match="Could not find task"):
        deploy.jobs.taskValues.get("regster", "model_version")


def test_task_values_must_be_json_and_at_most_48_kib(tmp_path):
    tv = job_dbutils(tmp_path, "register").jobs.taskValues
    with pytest.raises(TypeError, match="JSON"):
        tv.set("v", {1, 2})
    with pytest.raises(ValueError, match="48 KiB"):
        tv.set("v", "x" * (48 * 1024))
    tv.set("v", {"ok": [1, 2.5, None, "s"]})


def test_secrets_come_from_an_owner_only_file_and_are_redacted(tmp_path, monkeypatch):
    path = tmp_path / "secrets.json"
    offline.put_secret("ptdeploy", "hf_token", "hf_abc123", path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secrets = offline.Secrets(path)
    with pytest.raises(ValueError, match="put-secret ptdeploy other"):
        secrets.get("ptdeploy", "other")
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stdout", buffer)
    value = secrets.get("ptdeploy", "hf_token")
    print("token is", value)
    assert value == "hf_abc123"  # usable as the string it is
    assert repr(value) == "[REDACTED]"
    assert "hf_abc123" not in buffer.getvalue() and "[REDACTED]" in buffer.getvalue()
    os.chmod(path, 0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        secrets.get("ptdeploy", "hf_token")


def test_secret_references_as_in_spark_env_vars():
    assert offline.secret_reference("{{secrets/ptdeploy/hf_token}}") == ("ptdeploy", "hf_token")
    assert offline.secret_reference("plain") is None


def test_library_task_value_helpers_follow_the_job_context(tmp_path, monkeypatch):
    register = job_dbutils(tmp_path, "register")
    set_task_values({"model_version": "2"}, {"dbutils": register})
    ns = {"dbutils": job_dbutils(tmp_path, "deploy")}
    assert get_task_value("register", "model_version", None, ns) == "2"
    with pytest.raises(TaskValueError, match="depends_on"):
        get_task_value("register", "task", None, ns)
    # outside a job (interactive on Databricks): the debug value, None allowed
    interactive = {"dbutils": offline.OfflineDbutils()}
    assert get_task_value("register", "model_version", None, interactive) is None
    assert get_task_value("register", "model_version", "5", interactive) == "5"
    context = tmp_path / "ctx.json"
    register.context.write(context)
    assert json.loads(context.read_text())["task_key"] == "register"


def test_secrets_cli_reads_the_value_from_stdin_never_an_argument(tmp_path, monkeypatch, capsys):
    from ptdeploy import cli

    path = tmp_path / "s.json"
    monkeypatch.setenv(offline.SECRETS_ENV, str(path))
    monkeypatch.setattr(sys, "stdin", io.StringIO("hf_secret_value\n"))
    assert cli.main(["secrets", "put", "ptdeploy", "hf_token"]) == 0
    assert offline.Secrets(path).get("ptdeploy", "hf_token") == "hf_secret_value"
    assert cli.main(["secrets", "list"]) == 0
    out = capsys.readouterr().out
    assert "ptdeploy: hf_token" in out and "hf_secret_value" not in out
