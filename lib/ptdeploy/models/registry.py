"""Register a logged model, wait until the version is READY, and point an alias at it.

All or nothing: if anything fails after the version was created (it never became READY,
the alias could not be set), the version is deleted again, so a failed notebook run
leaves no half-registered version behind and the alias keeps its previous target.
"""

from __future__ import annotations

from dataclasses import dataclass

from ptdeploy.clock import Clock, MonotonicClock
from ptdeploy.errors import RegistryError, version_list
from ptdeploy.names import check_alias
from ptdeploy.progress import Progress, reporter

DEFAULT_ALIAS = "champion"
# Registration moves this alias; the champion alias moves only once the endpoint serves
# the version and its smoke test passed (ptdeploy.templates.flow.promote).
CHALLENGER_ALIAS = "challenger"


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    alias: str | None
    model_uri: str  # models:/name/version
    source_uri: str  # what was registered

    @property
    def alias_uri(self) -> str | None:
        return f"models:/{self.name}@{self.alias}" if self.alias else None


def _client():
    import mlflow

    return mlflow.MlflowClient()


def wait_until_version_ready(
    name: str,
    version: str,
    *,
    timeout: float = 600.0,
    poll_interval: float = 2.0,
    clock: Clock | None = None,
    progress: Progress = False,
) -> None:
    """Block until the model version's status is READY; raise on failure or timeout.

    ``progress``: ``False``, ``True`` (a bar) or a callback given each polled status
    (``ptdeploy.progress``), as the endpoint waits take one.
    """
    clock = clock or MonotonicClock()
    client = _client()
    deadline = clock.time() + timeout
    with reporter(progress, f"waiting for {name} version {version}") as report:
        while True:
            mv = client.get_model_version(name, version)
            status = str(mv.status)
            report(status)
            if status == "READY":
                return
            if status == "FAILED_REGISTRATION":
                raise RegistryError(
                    f"model version {name} v{version} failed registration: {mv.status_message}"
                )
            if clock.time() >= deadline:
                raise RegistryError(
                    f"model version {name} v{version} still {status} after {timeout:.0f}s; "
                    "check the registry (Catalog Explorer on Databricks) and try again."
                )
            clock.sleep(poll_interval)


def register(
    model_uri: str,
    name: str,
    *,
    alias: str | None = DEFAULT_ALIAS,
    timeout: float = 600.0,
    tags: dict[str, str] | None = None,
) -> RegisteredVersion:
    """Register ``model_uri`` as a new version of ``name``, wait for READY, set the alias."""
    import mlflow

    if alias:
        check_alias(alias)
    try:
        mv = mlflow.register_model(model_uri, name, tags=tags)
    except Exception as exc:
        raise RegistryError(f"could not register {model_uri} as {name!r}: {exc}") from exc
    version = str(mv.version)
    try:
        wait_until_version_ready(name, version, timeout=timeout)
        if alias:
            _client().set_registered_model_alias(name, alias, version)
    except BaseException:
        delete_version(name, version)
        raise
    return RegisteredVersion(name, version, alias, f"models:/{name}/{version}", model_uri)


def delete_version(name: str, version: str) -> None:
    """Delete one version (used to undo a failed registration); never raises."""
    try:
        _client().delete_model_version(name, version)
    except Exception:  # already gone, or the registry is unreachable: nothing more to undo
        pass


def latest_version(name: str) -> str:
    """Highest version number of a registered model; a clear error if it does not exist."""
    client = _client()
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except Exception as exc:
        raise RegistryError(f"cannot list versions of {name!r}: {exc}") from exc
    if not versions:
        raise RegistryError(
            f"registered model {name!r} does not exist or has no version; check the name "
            "(catalog.schema.model) and your permissions."
        )
    return str(max(int(v.version) for v in versions))


def check_version_exists(name: str, version: str) -> str:
    """``version`` of ``name`` if registered, else an error naming what exists."""
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        raise RegistryError(f"registered model {name!r} does not exist: {exc.message}") from exc
    try:
        client.get_model_version(name, str(version))
    except MlflowException as exc:
        existing = version_list(client.search_model_versions(f"name='{name}'"))
        raise RegistryError(
            f"model {name!r} has no version {version!r}; existing versions: {existing}."
        ) from exc
    return str(version)


def alias_version(name: str, alias: str) -> str | None:
    """The version an alias points to, or None."""
    try:
        return str(_client().get_model_version_by_alias(name, alias).version)
    except Exception:
        return None


def set_alias(name: str, alias: str, version: str) -> None:
    """Point ``alias`` of ``name`` at ``version``."""
    check_alias(alias)
    try:
        _client().set_registered_model_alias(name, alias, str(version))
    except Exception as exc:
        raise RegistryError(
            f"could not point alias {alias!r} of {name!r} at {version}: {exc}"
        ) from exc
