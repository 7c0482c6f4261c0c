"""Reaching a real workspace from a laptop: profile, experiment, and failing in seconds."""

from __future__ import annotations

import socket
import threading

import pytest
from ptdeploy import targets
from ptdeploy.errors import AuthError, PtdeployError
from ptdeploy.templates import runner


@pytest.fixture
def no_databricks_config(monkeypatch, tmp_path):
    for name in list(__import__("os").environ):
        if name.startswith("DATABRICKS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "databrickscfg"))
    return tmp_path


def test_missing_auth_says_what_to_set(no_databricks_config):
    with pytest.raises(AuthError, match="DATABRICKS_HOST"):
        targets.check_workspace(targets.databricks_client())


def test_an_unknown_profile_is_named(no_databricks_config):
    (no_databricks_config / "databrickscfg").write_text(
        "[dev]\nhost = https://example.cloud.databricks.com\ntoken = x\n"
    )
    with pytest.raises(AuthError, match="'prod'"):
        targets.databricks_client("prod")


@pytest.mark.slow  # waits out the bounded timeouts
def test_a_dead_host_fails_within_the_bounded_timeouts(no_databricks_config):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    w = targets.databricks_client(
        host=f"http://127.0.0.1:{port}", token="x", retry_timeout_seconds=2, http_timeout_seconds=2
    )
    with pytest.raises(AuthError, match=f"127.0.0.1:{port}"):
        targets.check_workspace(w)


@pytest.mark.slow  # waits out the bounded timeouts
def test_a_host_that_never_answers_fails_within_the_http_timeout(no_databricks_config):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)  # accepts connections, never answers
    stop = threading.Event()
    try:
        w = targets.databricks_client(
            host=f"http://127.0.0.1:{server.getsockname()[1]}",
            token="x",
            retry_timeout_seconds=2,
            http_timeout_seconds=1,
        )
        with pytest.raises(AuthError, match="did not accept the request"):
            targets.check_workspace(w)
    finally:
        stop.set()
        server.close()


def test_the_workspace_experiment_defaults_to_the_users_folder():
    assert targets.default_experiment("ana@example.com") == "/Users/ana@example.com/ptdeploy"


def test_run_checks_the_workspace_before_starting_a_kernel(no_databricks_config, tmp_path):
    with pytest.raises(AuthError):
        runner.run_notebook(
            runner.notebooks_dir() / "llama_completions.ipynb",
            runner.parameters_dir() / "llama_completions" / "databricks.yaml",
            out_dir=tmp_path,
            profile="nope",
        )
    assert not list(tmp_path.glob("*.ipynb")), "no kernel started, nothing written"
    with pytest.raises(PtdeployError, match="--profile 'x' applies to target 'databricks'"):
        runner.workspace_env("local", profile="x")
