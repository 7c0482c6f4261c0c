"""get-model-optimization-info through the SDK's API client, against a recording fake.

The fake stands in for ``w.api_client`` (the only surface the module uses); the lead's
integration tests run the same functions against the local workspace.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from databricks.sdk.errors.platform import ResourceDoesNotExist
from ptdeploy.errors import ModelVersionNotFoundError, NotOptimizableError, PtdeployError
from ptdeploy.optimization import (
    OptimizationInfo,
    ProvisioningPath,
    get_optimization_info,
    require_optimizable,
)

PREFIX = "/api/2.0/serving-endpoints/get-model-optimization-info/"


class FakeApiClient:
    """Answers get-model-optimization-info from a dict of (name, version) -> body."""

    def __init__(self, answers: dict[tuple[str, str], dict]):
        self.answers = answers
        self.calls: list[tuple[str, str]] = []

    def do(self, method, path=None, url=None, query=None, headers=None, body=None, **_):
        self.calls.append((method, path))
        assert method == "GET" and path.startswith(PREFIX)
        name, version = path[len(PREFIX) :].rsplit("/", 1)
        if (name, version) not in self.answers:
            raise ResourceDoesNotExist(
                f"Model version {name}/{version} does not exist.",
                error_code="RESOURCE_DOES_NOT_EXIST",
            )
        return self.answers[(name, version)]


def workspace(answers):
    return SimpleNamespace(api_client=FakeApiClient(answers))


def test_tokens_per_second_answer():
    w = workspace(
        {
            ("main.default.llama", "3"): {
                "optimizable": True,
                "model_type": "llama",
                "throughput_chunk_size": 980,
            }
        }
    )
    info = get_optimization_info(w, "main.default.llama", 3)
    assert info == OptimizationInfo(True, "llama", throughput_chunk_size=980)
    assert info.path is ProvisioningPath.TOKENS_PER_SECOND
    assert info.chunk_size == 980
    assert w.api_client.calls == [("GET", PREFIX + "main.default.llama/3")]
    assert require_optimizable(info, "main.default.llama", 3) is info


def test_model_units_answer_picks_model_units_path():
    w = workspace(
        {
            ("system.ai.gpt-oss-120b", "1"): {
                "optimizable": True,
                "model_type": "gpt-oss",
                "model_unit_chunk_size": 50,
            }
        }
    )
    info = get_optimization_info(w, "system.ai.gpt-oss-120b", "1")
    assert info.path is ProvisioningPath.MODEL_UNITS
    assert info.chunk_size == 50
    assert "model units" in info.describe()


def test_not_optimizable_stops_with_guidance():
    w = workspace({("main.default.phi", "2"): {"optimizable": False}})
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


def test_unknown_version_names_model_and_version():
    w = workspace({})
    with pytest.raises(ModelVersionNotFoundError) as err:
        get_optimization_info(w, "main.default.llama", 7)
    assert "'main.default.llama' version 7" in str(err.value)
    assert isinstance(err.value, LookupError)


@pytest.mark.parametrize("version", [0, -1, "latest", "", True, "1.5"])
def test_invalid_version_refused_before_any_call(version):
    w = workspace({})
    with pytest.raises(PtdeployError, match="version="):
        get_optimization_info(w, "main.default.llama", version)
    assert w.api_client.calls == []


def test_empty_model_name_refused():
    with pytest.raises(PtdeployError, match="model_name=''"):
        get_optimization_info(workspace({}), "", 1)


@pytest.mark.parametrize(
    "answer",
    [
        {"optimizable": True, "model_type": "llama"},  # no chunk size at all
        {"optimizable": True, "throughput_chunk_size": 0},
        {"optimizable": True, "throughput_chunk_size": "many"},
    ],
)
def test_unusable_answers_are_explained(answer):
    w = workspace({("m", "1"): answer})
    with pytest.raises(PtdeployError, match="get-model-optimization-info"):
        get_optimization_info(w, "m", 1)


def test_round_trip_as_dict():
    body = {"optimizable": True, "model_type": "gte", "throughput_chunk_size": 1580}
    assert OptimizationInfo.from_dict(body).as_dict() == body
