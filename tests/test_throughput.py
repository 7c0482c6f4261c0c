"""Throughput plans: valid values, every refusal, rounding up, and the path choice."""

from __future__ import annotations

import pytest
from databricks.sdk.service.serving import ServedEntityInput
from ptdeploy.errors import NotOptimizableError, ThroughputError
from ptdeploy.serving.optimization import OptimizationInfo
from ptdeploy.serving.throughput import ModelUnitsPlan, ThroughputPlan, plan_from_info

CHUNK = 980


def test_from_chunks_gives_multiples_and_sdk_kwargs():
    plan = ThroughputPlan.from_chunks(CHUNK, 2, 3)
    assert (plan.min_provisioned_throughput, plan.max_provisioned_throughput) == (1960, 2940)
    assert (plan.min_chunks, plan.max_chunks) == (2, 3)
    entity = ServedEntityInput(
        entity_name="main.default.m", entity_version="1", **plan.served_entity_kwargs()
    )
    assert entity.as_dict() == {
        "entity_name": "main.default.m",
        "entity_version": "1",
        "min_provisioned_throughput": 1960,
        "max_provisioned_throughput": 2940,
        "scale_to_zero_enabled": False,
    }
    assert "1960-2940 tokens/s" in plan.describe()


def test_scale_to_zero_with_zero_minimum():
    plan = ThroughputPlan.from_chunks(CHUNK, 0, 1, scale_to_zero=True)
    assert plan.served_entity_kwargs() == {
        "min_provisioned_throughput": 0,
        "max_provisioned_throughput": 980,
        "scale_to_zero_enabled": True,
    }


@pytest.mark.parametrize(
    ("min_tps", "max_tps", "expected"),
    [
        (0, 2500, (0, 2940)),  # 2500 -> 3 chunks
        (1960, 1960, (1960, 1960)),  # exact multiples stay
        (980.5, 1000, (1960, 1960)),  # a fraction over a chunk needs one more
        (1, 1, (980, 980)),
    ],
)
def test_from_tokens_per_second_rounds_up(min_tps, max_tps, expected):
    plan = ThroughputPlan.from_tokens_per_second(CHUNK, min_tps, max_tps)
    assert (plan.min_provisioned_throughput, plan.max_provisioned_throughput) == expected


def test_not_a_multiple_names_field_value_and_nearest_values():
    with pytest.raises(ThroughputError) as err:
        ThroughputPlan(1000, 2940, CHUNK)
    msg = str(err.value)
    assert "min_provisioned_throughput=1000" in msg
    assert "980 or 1960" in msg
    assert "chunk size 980" in msg
    with pytest.raises(ThroughputError, match=r"max_provisioned_throughput=3000 .*2940 or 3920"):
        ThroughputPlan(980, 3000, CHUNK)


def test_nearest_values_for_max_never_suggest_zero():
    with pytest.raises(ThroughputError) as err:
        ThroughputPlan(0, 500, CHUNK)
    assert "nearest valid values: 980 (" in str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        (
            {"min_provisioned_throughput": -980, "max_provisioned_throughput": 980},
            "min_provisioned_throughput=-980",
        ),
        (
            {"min_provisioned_throughput": 0, "max_provisioned_throughput": 0},
            "max_provisioned_throughput=0",
        ),
        (
            {"min_provisioned_throughput": 2940, "max_provisioned_throughput": 1960},
            "must be <= the maximum",
        ),
        (
            {"min_provisioned_throughput": 980.0, "max_provisioned_throughput": 1960},
            "integer number of tokens/s",
        ),
        (
            {"min_provisioned_throughput": "980", "max_provisioned_throughput": 1960},
            "integer number of tokens/s",
        ),
        (
            {"min_provisioned_throughput": 0, "max_provisioned_throughput": True},
            "integer number of tokens/s",
        ),
        (
            {
                "min_provisioned_throughput": 980,
                "max_provisioned_throughput": 1960,
                "scale_to_zero_enabled": True,
            },
            "needs min_provisioned_throughput=0",
        ),
        (
            {
                "min_provisioned_throughput": 0,
                "max_provisioned_throughput": 1960,
                "scale_to_zero_enabled": "yes",
            },
            "scale_to_zero_enabled='yes'",
        ),
    ],
)
def test_plan_refusals(kwargs, fragment):
    with pytest.raises(ThroughputError) as err:
        ThroughputPlan(chunk_size=CHUNK, **kwargs)
    assert fragment in str(err.value)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("chunk", [0, -980, 980.0, None, True])
def test_invalid_chunk_size(chunk):
    with pytest.raises(ThroughputError, match=rf"chunk_size={chunk!r}"):
        ThroughputPlan.from_chunks(chunk, 1, 2)


@pytest.mark.parametrize(
    ("lo", "hi", "fragment"),
    [
        (-1, 2, "min_chunks=-1"),
        (0, 0, "max_chunks=0"),
        (3, 2, "min_chunks=3 is greater than max_chunks=2"),
        (1.5, 2, "min_chunks=1.5"),
    ],
)
def test_from_chunks_refusals(lo, hi, fragment):
    with pytest.raises(ThroughputError, match=fragment):
        ThroughputPlan.from_chunks(CHUNK, lo, hi)


@pytest.mark.parametrize(
    ("lo", "hi", "fragment"),
    [
        (0, 0, "max_tps=0"),
        (3000, 2000, "min_tps=3000 is greater than max_tps=2000"),
        (-5, 100, "min_tps=-5"),
        (0, float("nan"), "max_tps=nan"),
        (0, "2000", "max_tps='2000'"),
    ],
)
def test_from_tokens_per_second_refusals(lo, hi, fragment):
    with pytest.raises(ThroughputError, match=fragment):
        ThroughputPlan.from_tokens_per_second(CHUNK, lo, hi)


def test_model_units_plan():
    plan = ModelUnitsPlan.from_chunks(50, 2)
    assert plan.provisioned_model_units == 100
    assert plan.served_entity_kwargs() == {"provisioned_model_units": 100}
    assert plan.scale_to_zero_enabled is False
    with pytest.raises(ThroughputError, match=r"provisioned_model_units=75 .*50 or 100"):
        ModelUnitsPlan(75, 50)
    with pytest.raises(ThroughputError, match="provisioned_model_units=0"):
        ModelUnitsPlan(0, 50)
    with pytest.raises(ThroughputError, match="model_unit_chunk_size=0"):
        ModelUnitsPlan(100, 0)


def test_plan_from_info_tokens_path():
    info = OptimizationInfo(True, "llama", throughput_chunk_size=CHUNK)
    plan = plan_from_info(info, 1, 2, scale_to_zero=False)
    assert plan == ThroughputPlan(980, 1960, CHUNK)


def test_plan_from_info_model_units_path():
    info = OptimizationInfo(True, "gpt-oss", model_unit_chunk_size=50)
    plan = plan_from_info(info, 0, 3)
    assert isinstance(plan, ModelUnitsPlan)
    assert plan.served_entity_kwargs() == {"provisioned_model_units": 150}
    with pytest.raises(ThroughputError, match="does not scale to zero"):
        plan_from_info(info, 0, 3, scale_to_zero=True)
    with pytest.raises(ThroughputError, match="min_chunks=4 is greater than max_chunks=3"):
        plan_from_info(info, 4, 3)


def test_plan_from_info_refuses_not_optimizable():
    with pytest.raises(NotOptimizableError):
        plan_from_info(OptimizationInfo(False), 1, 2)
