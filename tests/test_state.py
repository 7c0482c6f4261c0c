"""One state directory whatever the working directory."""

from __future__ import annotations

import subprocess
import sys

from ptdeploy import state, targets


def test_state_dir_from_env(ptdeploy_home):
    assert state.state_dir() == ptdeploy_home.resolve()
    assert state.tracking_uri() == f"sqlite:///{ptdeploy_home.resolve() / 'mlflow.db'}"


def test_same_registry_from_any_working_directory(tmp_path, ptdeploy_home):
    code = "from ptdeploy import state; print(state.tracking_uri())"
    outs = {
        subprocess.run(
            [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout
        for cwd in (tmp_path, "/")
    }
    assert outs == {state.tracking_uri() + "\n"}


def test_local_mlflow_artifacts_stay_in_the_state_dir(tmp_path, monkeypatch, ptdeploy_home):
    import mlflow

    monkeypatch.chdir(tmp_path)
    targets.configure_mlflow("local")
    with mlflow.start_run() as run:
        mlflow.log_text("x", "x.txt")
    uri = mlflow.get_run(run.info.run_id).info.artifact_uri
    assert str(ptdeploy_home.resolve()) in uri
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()


def test_databricks_target_uses_unity_catalog():
    assert targets.registry_uri("databricks") == "databricks-uc"
