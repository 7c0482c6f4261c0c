"""Registration: READY, alias moves, nothing half-registered on failure."""

from __future__ import annotations

import mlflow
import pytest
from fakes import FakeClock
from ptdeploy import targets
from ptdeploy.errors import RegistryError
from ptdeploy.models import model_logging, registry, sources


@pytest.fixture(scope="module")
def logged():
    targets.configure_mlflow("local")
    return model_logging.log_model(sources.build_tiny_llama(), task="llm/v1/completions")


def test_register_twice_gives_version_2_and_moves_the_alias(logged):
    name = "main.default.registry_twice"
    v1 = registry.register(logged.model_uri, name)
    v2 = registry.register(logged.model_uri, name)
    assert (v1.version, v2.version) == ("1", "2")
    assert registry.alias_version(name, "champion") == "2"
    client = mlflow.MlflowClient()
    assert client.get_model_version(name, "2").status == "READY"
    assert registry.latest_version(name) == "2"


def test_failed_alias_leaves_no_half_registered_version(logged, monkeypatch):
    name = "main.default.registry_rollback"
    registry.register(logged.model_uri, name)

    def boom(*args, **kwargs):
        raise RuntimeError("registry went away")

    monkeypatch.setattr(mlflow.MlflowClient, "set_registered_model_alias", boom)
    with pytest.raises(RuntimeError, match="registry went away"):
        registry.register(logged.model_uri, name)
    monkeypatch.undo()
    versions = [
        str(v.version) for v in mlflow.MlflowClient().search_model_versions(f"name='{name}'")
    ]
    assert versions == ["1"]
    assert registry.alias_version(name, "champion") == "1"


def test_wait_until_ready_times_out_with_the_state(monkeypatch):
    class Pending:
        status = "PENDING_REGISTRATION"
        status_message = ""

    monkeypatch.setattr(mlflow.MlflowClient, "get_model_version", lambda self, n, v: Pending())
    clock, seen = FakeClock(0.0), []
    with pytest.raises(RegistryError, match="still PENDING_REGISTRATION after 10s"):
        registry.wait_until_version_ready("m", "1", timeout=10, clock=clock, progress=seen.append)
    assert clock.time() >= 10  # it waited on the clock it was given
    assert seen and set(seen) == {"PENDING_REGISTRATION"}  # each polled status reported


def test_unknown_model_and_version(logged):
    with pytest.raises(RegistryError, match="does not exist"):
        registry.latest_version("main.default.nope")
    name = "main.default.registry_versions"
    registry.register(logged.model_uri, name)
    with pytest.raises(RegistryError, match="has no version '7'; existing versions: 1"):
        registry.check_version_exists(name, "7")


def test_bad_alias_refused_before_registering(logged):
    with pytest.raises(Exception, match="reserved"):
        registry.register(logged.model_uri, "main.default.registry_alias", alias="latest")
    assert not mlflow.MlflowClient().search_model_versions("name='main.default.registry_alias'")
