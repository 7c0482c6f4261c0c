"""get-model-optimization-info through databricks-sdk, against the local workspace's
real app (in-process, ``tests/fakes.py``) whose catalog describes the test's models.

Answers the local workspace never gives but Databricks may (model units, malformed
fields) are checked where ptdeploy parses them, ``OptimizationInfo.from_dict``.
"""

from __future__ import annotations

import fakes
import pytest
from ptdeploy.errors import ModelVersionNotFoundError, NotOptimizableError, PtdeployError
from ptdeploy.serving.optimization import (
    OptimizationInfo,
    ProvisioningPath,
    get_optimization_info,
    require_optimizable,
)
from ptdeploy.workspace.optimization_info import ModelDescription


class RecordingCatalog(fakes.Catalog):
    """Describes ``llama`` version 3 (optimizable, chunk 980) and ``phi`` version 2 (not
    optimizable); records every model the workspace was asked about."""

    def __init__(self) -> None:
        super().__init__(models={("main.default.llama", "3"), ("main.default.phi", "2")})
        self.calls: list[tuple[str, str]] = []

    def describe(self, name: str, version: str) -> ModelDescription:
        self.calls.append((name, version))
        desc = super().describe(name, version)
        if name == "main.default.phi":
            return ModelDescription(name, version, "llm/v1/chat", "PhiForCausalLM", False)
        return ModelDescription(**{**desc.__dict__, "throughput_chunk_size": 980})


@pytest.fixture(scope="module")
def catalog():
    return RecordingCatalog()


@pytest.fixture(scope="module")
def workspace(module_local_client, catalog):
    return module_local_client(fakes.ReadyWorker, catalog)


@pytest.fixture
def w(workspace, catalog):
    catalog.calls.clear()
    return workspace


def test_tokens_per_second_answer(w, catalog):
    info = get_optimization_info(w, "main.default.llama", 3)
    assert info == OptimizationInfo(True, "llama", throughput_chunk_size=980)
    assert info.path is ProvisioningPath.TOKENS_PER_SECOND
    assert info.chunk_size == 980
    assert catalog.calls == [("main.default.llama", "3")]
    assert require_optimizable(info, "main.default.llama", 3) is info


def test_model_units_answer_picks_model_units_path():
    body = {"optimizable": True, "model_type": "gpt-oss", "model_unit_chunk_size": 50}
    info = OptimizationInfo.from_dict(body)
    assert info.path is ProvisioningPath.MODEL_UNITS
    assert info.chunk_size == 50
    assert "model units" in info.describe()


def test_not_optimizable_stops_with_guidance(w):
    info = get_optimization_info(w, "main.default.phi", 2)
    assert not info.optimizable and info.path is None
    with pytest.raises(NotOptimizableError) as err:
        require_optimizable(info, "main.default.phi", 2)
    msg = str(err.value)
    assert "'main.default.phi' version 2" in msg
    assert "Llama" in msg and "GTE" in msg  # what would work
    assert "task" in msg  # what to check


def test_missing_optimizable_field_means_not_optimizable():
    assert OptimizationInfo.from_dict({}).optimizable is False


def test_unknown_version_names_model_and_version(w):
    with pytest.raises(ModelVersionNotFoundError) as err:
        get_optimization_info(w, "main.default.llama", 7)
    assert "'main.default.llama' version 7" in str(err.value)
    assert isinstance(err.value, LookupError)


@pytest.mark.parametrize("version", [0, -1, "latest", "", True, "1.5"])
def test_invalid_version_refused_before_any_call(w, catalog, version):
    with pytest.raises(PtdeployError, match="version="):
        get_optimization_info(w, "main.default.llama", version)
    assert catalog.calls == []


def test_empty_model_name_refused(w, catalog):
    with pytest.raises(PtdeployError, match="model_name=''"):
        get_optimization_info(w, "", 1)
    assert catalog.calls == []


@pytest.mark.parametrize(
    "answer",
    [
        {"optimizable": True, "model_type": "llama"},  # no chunk size at all
        {"optimizable": True, "throughput_chunk_size": 0},
        {"optimizable": True, "throughput_chunk_size": "many"},
    ],
)
def test_unusable_answers_are_explained(answer):
    with pytest.raises(PtdeployError, match="get-model-optimization-info"):
        OptimizationInfo.from_dict(answer)


def test_round_trip_as_dict():
    body = {"optimizable": True, "model_type": "gte", "throughput_chunk_size": 1580}
    assert OptimizationInfo.from_dict(body).as_dict() == body
