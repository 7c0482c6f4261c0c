"""The two places a notebook can deploy to, and how MLflow and the SDK reach each.

``local``: MLflow tracking and registry on the SQLite file of the state directory
(three-level names such as ``main.default.my_model`` work there as in Unity Catalog),
artifacts under the state directory, and the embedded local workspace server for the
serving API. ``databricks``: tracking ``databricks``, registry ``databricks-uc``, and the
SDK's unified auth (environment, profile or notebook context), never a token parameter.
"""

from __future__ import annotations

import enum
import os
from typing import TYPE_CHECKING

from ptdeploy import state

if TYPE_CHECKING:
    from databricks.sdk import WorkspaceClient

DEFAULT_LOCAL_EXPERIMENT = "/Shared/ptdeploy"


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


def configure_mlflow(target: Target | str, experiment: str | None = None) -> str | None:
    """Point MLflow at the target's tracking server and registry; return the experiment.

    On ``local`` an experiment is always set (default ``/Shared/ptdeploy``). On
    ``databricks`` the notebook's own experiment is kept unless one is named.
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
    mlflow.set_tracking_uri("databricks")
    mlflow.set_registry_uri("databricks-uc")
    if experiment:
        mlflow.set_experiment(experiment)
    return experiment


def registry_uri(target: Target | str) -> str:
    return state.tracking_uri() if Target(target) is Target.LOCAL else "databricks-uc"


def workspace_client(target: Target | str, profile: str | None = None) -> WorkspaceClient:
    """A ``WorkspaceClient`` for the target.

    ``local`` starts the embedded workspace if it is not running and authenticates with
    its token (read from the owner-only token file, never from a parameter).
    ``databricks`` uses the SDK's unified auth: ``DATABRICKS_HOST``/``DATABRICKS_TOKEN``,
    a ``~/.databrickscfg`` profile, or the notebook context on a cluster.
    """
    from databricks.sdk import WorkspaceClient

    target = Target(target)
    if target is Target.LOCAL:
        from ptdeploy.workspace import control

        ws = control.ensure_running()
        return WorkspaceClient(host=ws.host, token=ws.token, auth_type="pat")
    return WorkspaceClient(profile=profile) if profile else WorkspaceClient()
