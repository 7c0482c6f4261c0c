"""The two places a notebook can deploy to, and how MLflow and the SDK reach each.

``local``: MLflow tracking and registry on the SQLite file of the state directory
(three-level names such as ``main.default.my_model`` work there as in Unity Catalog),
artifacts under the state directory, and the embedded local workspace server for the
serving API. ``databricks``: tracking ``databricks``, registry ``databricks-uc``, and the
SDK's unified auth (environment, profile or notebook context), never a token parameter.
"""

from __future__ import annotations

import contextlib
import enum
import os
from typing import TYPE_CHECKING

from ptdeploy import state

if TYPE_CHECKING:
    from databricks.sdk import WorkspaceClient

DEFAULT_LOCAL_EXPERIMENT = "/Shared/ptdeploy"
# On a workspace, runs from a laptop go to an experiment under the user's own folder
# (``/Users/<user name>/<name>``), named after ``current_user.me()``.
DEFAULT_WORKSPACE_EXPERIMENT = "ptdeploy"
# What ``ptdeploy run --profile/--experiment`` hands to the notebook's kernel.
PROFILE_ENV = "DATABRICKS_CONFIG_PROFILE"  # the SDK's own variable
EXPERIMENT_ENV = "PTDEPLOY_EXPERIMENT"
# Bounds for a client on a workspace: the SDK otherwise retries a dead host ~300 s.
HTTP_TIMEOUT_SECONDS = 20
RETRY_TIMEOUT_SECONDS = 30


class Target(enum.StrEnum):
    LOCAL = "local"
    DATABRICKS = "databricks"


def _local_experiment(name: str) -> str:
    """Create (once) a local experiment whose artifacts live in the state directory.

    MLflow's implicit "Default" experiment stores artifacts under ``./mlruns`` of
    whatever directory the first run happened in; an explicit artifact location keeps
    every run in the state directory.
    """
    import mlflow

    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is None:
        safe = name.strip("/").replace("/", "_") or "default"
        location = (state.artifacts_dir() / safe).as_uri()
        try:
            client.create_experiment(name, artifact_location=location)
        except Exception:  # created concurrently by another process
            if client.get_experiment_by_name(name) is None:
                raise
    return name


def configure_mlflow(
    target: Target | str, experiment: str | None = None, profile: str | None = None
) -> str | None:
    """Point MLflow at the target's tracking server and registry; return the experiment.

    On ``local`` an experiment is always set (default ``/Shared/ptdeploy``). On
    ``databricks`` the experiment is ``experiment``, else ``$PTDEPLOY_EXPERIMENT`` (set by
    ``ptdeploy run --experiment``); with neither, the notebook's own experiment is kept on
    a cluster. ``profile`` (else ``$DATABRICKS_CONFIG_PROFILE``) selects the
    ``~/.databrickscfg`` profile MLflow authenticates with, as the SDK does.
    """
    import mlflow

    target = Target(target)
    if target is Target.LOCAL:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        uri = state.tracking_uri()
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        name = _local_experiment(experiment or DEFAULT_LOCAL_EXPERIMENT)
        mlflow.set_experiment(name)
        return name
    profile = profile or os.environ.get(PROFILE_ENV)
    mlflow.set_tracking_uri(f"databricks://{profile}" if profile else "databricks")
    mlflow.set_registry_uri(f"databricks-uc://{profile}" if profile else "databricks-uc")
    experiment = experiment or os.environ.get(EXPERIMENT_ENV)
    if experiment:
        mlflow.set_experiment(experiment)
    return experiment


def default_experiment(user_name: str) -> str:
    """``/Users/<user>/ptdeploy``: the user's own folder, which always exists."""
    return f"/Users/{user_name}/{DEFAULT_WORKSPACE_EXPERIMENT}"


def registry_uri(target: Target | str) -> str:
    return state.tracking_uri() if Target(target) is Target.LOCAL else "databricks-uc"


def check_profile(target: Target | str, profile: str | None) -> None:
    """A profile names a Databricks workspace: with any other target it is a mistake."""
    if profile and str(getattr(target, "value", target)) != Target.DATABRICKS.value:
        from ptdeploy.errors import ParameterError

        raise ParameterError(
            f"--profile {profile!r} applies to target 'databricks', not "
            f"{str(getattr(target, 'value', target))!r}: the local workspace authenticates "
            "with its own token."
        )


def workspace_client(target: Target | str, profile: str | None = None) -> WorkspaceClient:
    """A ``WorkspaceClient`` for the target.

    ``local`` starts the embedded workspace if it is not running and authenticates with
    its token (read from the owner-only token file, never from a parameter).
    ``databricks`` uses the SDK's unified auth: ``DATABRICKS_HOST``/``DATABRICKS_TOKEN``,
    a ``~/.databrickscfg`` profile, or the notebook context on a cluster.
    """
    from databricks.sdk import WorkspaceClient

    check_profile(target, profile)
    target = Target(target)
    if target is Target.LOCAL:
        from ptdeploy.workspace import control

        ws = control.ensure_running()
        return WorkspaceClient(host=ws.host, token=ws.token, auth_type="pat")
    return databricks_client(profile)


def warm_up(target: Target | str) -> None:
    """Start the local workspace in a background thread (nothing for ``databricks``).

    A notebook calls this before registering its model, so the server and its spare worker
    import torch and MLflow while the register step runs, instead of after it. A failure
    here is left for ``workspace_client`` to raise where the user reads it.
    """
    if Target(target) is not Target.LOCAL:
        return
    import threading

    from ptdeploy.workspace import control

    def start() -> None:
        with contextlib.suppress(Exception):
            control.ensure_running()

    threading.Thread(target=start, name="ptdeploy-workspace-warm-up", daemon=True).start()


def local_workspace_running() -> bool:
    """Whether the embedded local workspace is up (its server answers)."""
    from ptdeploy.workspace import control

    return control.status().running


def stop_local_workspace() -> bool:
    """Stop the embedded local workspace and its workers; False if it was not running."""
    from ptdeploy.workspace import control

    return control.stop(quiet=True)


def databricks_client(
    profile: str | None = None,
    *,
    http_timeout_seconds: int = HTTP_TIMEOUT_SECONDS,
    retry_timeout_seconds: int = RETRY_TIMEOUT_SECONDS,
    **config: str,
) -> WorkspaceClient:
    """A client on a real workspace by the SDK's unified auth, with bounded timeouts; a
    missing or wrong configuration is an ``AuthError`` that says what to set."""
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.config import Config

    from ptdeploy.errors import AuthError

    try:
        return WorkspaceClient(
            config=Config(
                profile=profile,
                http_timeout_seconds=http_timeout_seconds,
                retry_timeout_seconds=retry_timeout_seconds,
                **config,
            )
        )
    except Exception as exc:  # the SDK raises ValueError for unresolvable configurations
        where = f"profile {profile!r}" if profile else "the environment"
        raise AuthError(
            f"cannot configure a Databricks client from {where}: {exc}. Set DATABRICKS_HOST "
            "and DATABRICKS_TOKEN, or run `databricks auth login --profile NAME` and pass "
            "--profile NAME (profiles live in ~/.databrickscfg)."
        ) from exc


def check_workspace(w: WorkspaceClient) -> str:
    """Ask the workspace who we are (bounded by the client's timeouts); the user name, or an
    ``AuthError`` naming the host and what to fix."""
    from ptdeploy.errors import AuthError

    try:
        me = w.current_user.me()
    except Exception as exc:
        raise AuthError(
            f"workspace {w.config.host} did not accept the request: {type(exc).__name__}: "
            f"{exc}. Check the host is reachable and the token or profile is valid "
            "(`databricks auth login`)."
        ) from exc
    if not me.user_name:
        raise AuthError(f"workspace {w.config.host} answered current_user.me() without a name")
    return me.user_name
