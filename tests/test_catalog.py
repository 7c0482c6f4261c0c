"""Models already in Unity Catalog: the system.ai rules, version lookup with errors that
list what exists, the task of a registered version, and the seeded local system.ai."""

from __future__ import annotations

import fakes
import pytest
from ptdeploy import targets
from ptdeploy.errors import ModelVersionNotFoundError, NotOptimizableError, ParameterError
from ptdeploy.models import catalog
from ptdeploy.templates import specs, unity_catalog
from ptdeploy.templates.parameters import Params

BASE_LLAMA = "system.ai.meta_llama_3_8b"


@pytest.fixture(autouse=True)
def _local_registry(ptdeploy_home):
    targets.configure_mlflow("local")


@pytest.mark.parametrize(
    "model",
    [
        "meta_llama_3_8b",
        "meta_llama_3_70b",
        "meta_llama_v3_1_405b",
        "meta_llama_v3_1_8b",
        "llama_v3_2_1b",
        "llama_2_7b",
    ],
)
def test_base_meta_llama_names(model):
    assert catalog.is_base_meta_llama(model)


@pytest.mark.parametrize(
    "model",
    [
        "meta_llama_3_8b_instruct",
        "meta_llama_v3_1_8b_instruct",
        "llama_v3_2_1b_instruct",
        "meta_llama_v3_1_405b_instruct_fp8",
        "llama_2_13b_chat",
        "llama-4-maverick",  # Llama 4 is published as Instruct only
        "deepseek_r1_distill_llama_8b",  # not a Meta Llama version
        "gte_large_en_v1_5",
        "mixtral_8x7b_v0_1",
    ],
)
def test_not_base_meta_llama(model):
    assert not catalog.is_base_meta_llama(model)


def test_system_ai_base_llama_is_refused_with_the_reason():
    with pytest.raises(NotOptimizableError) as err:
        catalog.check_system_ai_rules(BASE_LLAMA)
    message = str(err.value)
    assert "system.ai.meta_llama_3_8b" in message
    assert "base" in message and "Instruct" in message and "_instruct" in message
    # The same name outside system.ai (your own catalog, a Marketplace install) is allowed.
    catalog.check_system_ai_rules("main.default.meta_llama_3_8b")
    catalog.check_system_ai_rules("system.ai.llama_v3_2_1b_instruct")


def _params(**values) -> Params:
    spec = specs.DEPLOY_FROM_UNITY_CATALOG
    defaults = {
        "catalog": "system",
        "schema": "ai",
        "model_name": "smollm2_135m_instruct",
        "model_version": "",
        "endpoint_name": "uc-test",
        "min_chunks": 0,
        "max_chunks": 1,
        "scale_to_zero": False,
        "wait_timeout_minutes": 5,
        "prompt": "Hi",
        "max_tokens": 4,
        "teardown": False,
        **fakes.GATEWAY_OFF,
        "target": "local",
        "steps": "all",
    }
    return Params(spec, spec.validate({**defaults, **values}), "python")


def test_resolve_refuses_base_llama_before_seeding_or_calling(ptdeploy_home):
    with pytest.raises(NotOptimizableError, match="base .*Meta Llama"):
        unity_catalog.resolve(_params(model_name="meta_llama_3_8b"), w=None)
    import mlflow

    names = {m.name for m in mlflow.MlflowClient().search_registered_models()}
    assert BASE_LLAMA not in names, "refused before anything was registered"


@pytest.mark.slow  # logs and registers a model in MLflow
def test_unknown_model_lists_the_schema(registered_tiny_completions):
    with pytest.raises(ModelVersionNotFoundError) as err:
        catalog.resolve_version("main.default.no_such_model", None, target="local")
    message = str(err.value)
    assert "model_name='no_such_model'" in message
    assert registered_tiny_completions[0] in message  # main.default.tiny_completions exists


def test_unknown_system_ai_model_lists_the_local_seeds():
    with pytest.raises(ModelVersionNotFoundError) as err:
        catalog.resolve_version("system.ai.llama_v3_2_1b_instruct", None, target="local")
    for name in catalog.LOCAL_SEEDS:
        assert name in str(err.value)


@pytest.mark.slow  # logs and registers a model in MLflow
def test_unknown_version_lists_the_versions(registered_tiny_completions):
    name, version = registered_tiny_completions
    with pytest.raises(ModelVersionNotFoundError) as err:
        catalog.resolve_version(name, 9, target="local")
    assert "has no version 9" in str(err.value)
    assert f"Existing versions: {version}" in str(err.value)
    assert catalog.resolve_version(name, version, target="local") == version
    assert catalog.resolve_version(name, None, target="local") == version  # latest


def test_model_version_parameter_is_typed():
    assert _params(model_version="").model_version is None
    assert _params(model_version="3").model_version == 3
    with pytest.raises(ParameterError, match="parameter 'model_version': invalid value 'v3'"):
        _params(model_version="v3")


@pytest.mark.slow  # logs and registers a model in MLflow
def test_model_task_reads_the_logged_task(registered_tiny_completions, registered_tiny_chat):
    assert catalog.model_task(*registered_tiny_completions) == "llm/v1/completions"
    assert catalog.model_task(*registered_tiny_chat) == "llm/v1/chat"


@pytest.mark.slow  # seeds system.ai: logs and registers models in MLflow
def test_seeding_is_idempotent_and_documented():
    import mlflow

    assert catalog.seed_system_ai(only=[BASE_LLAMA], quiet=True) == [BASE_LLAMA]
    assert catalog.seed_system_ai(only=[BASE_LLAMA], quiet=True) == []
    client = mlflow.MlflowClient()
    versions = client.search_model_versions(f"name='{BASE_LLAMA}'")
    assert [str(v.version) for v in versions] == ["1"]
    model = client.get_registered_model(BASE_LLAMA)
    assert "STAND-IN" in model.description and model.tags["ptdeploy.local_seed"] == "tiny-llama"
    assert catalog.model_task(BASE_LLAMA, "1") == "llm/v1/completions"
    # Seeded or not, the rule still refuses it.
    with pytest.raises(NotOptimizableError):
        unity_catalog.resolve(_params(model_name="meta_llama_3_8b"), w=None)


def test_seeding_an_unknown_name_is_refused():
    with pytest.raises(ModelVersionNotFoundError, match="no local seed for system.ai.nope"):
        catalog.seed_system_ai(only=["system.ai.nope"])


def test_catalog_model_as_registered_version():
    from ptdeploy.serving.optimization import OptimizationInfo

    model = unity_catalog.CatalogModel(
        "system.ai.x", "4", "llm/v1/chat", OptimizationInfo(True, "llama", 980)
    )
    assert model.registered.name == "system.ai.x" and model.registered.version == "4"
    assert model.registered.model_uri == "models:/system.ai.x/4"
    assert "version 4 | task llm/v1/chat" in model.describe()


def test_a_version_that_does_not_record_its_task(monkeypatch):
    from types import SimpleNamespace

    import mlflow
    from ptdeploy.serving.optimization import OptimizationInfo

    monkeypatch.setattr(
        mlflow.models, "get_model_info", lambda uri: SimpleNamespace(metadata={}, flavors={})
    )
    gte = OptimizationInfo(True, "gte", 100)
    llama = OptimizationInfo(True, "llama", 980)
    assert catalog.model_task("system.ai.gte_large_en_v1_5", "1", gte) == "llm/v1/embeddings"
    assert catalog.model_task("system.ai.x_instruct", "1", llama) == "llm/v1/chat"
    with pytest.raises(NotOptimizableError, match="logged with task None"):
        catalog.model_task("main.default.x", "1", OptimizationInfo(False))


@pytest.mark.slow  # seeds and registers models
def test_resolve_by_step_hands_the_version_over(registered_tiny_completions, monkeypatch):
    """register: the latest version, set as task values; deploy/smoke_test alone: the
    register task's value (the debugValue off Databricks: none, so the latest again)."""
    from ptdeploy.templates import notebook

    name, version = registered_tiny_completions
    handed: dict = {}
    monkeypatch.setattr(unity_catalog, "set_task_values", lambda values: handed.update(values))
    w = targets.workspace_client("local")
    catalog_, schema, model = name.split(".")
    base = {"catalog": catalog_, "schema": schema, "model_name": model}
    model_ = unity_catalog.resolve(_params(**base, steps="register"), w)
    assert (model_.version, model_.task) == (version, "llm/v1/completions")
    assert model_.info.optimizable and model_.info.throughput_chunk_size
    assert handed == {"model_name": name, "model_version": version, "task": "llm/v1/completions"}

    asked: list = []

    def task_value(task_key, key, debug_value, namespace=None):
        asked.append((task_key, key))
        return version

    monkeypatch.setattr(unity_catalog, "get_task_value", task_value)
    handed.clear()
    assert unity_catalog.resolve(_params(**base, steps="smoke_test"), w).version == version
    assert asked == [("register", "model_version")]
    assert handed == {}, "only the register task sets task values"
    assert notebook.get_task_value("register", "model_version", "7") == "7"  # off Databricks
