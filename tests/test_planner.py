"""Planner: worked examples computed by hand here, never by calling the code under test."""

from __future__ import annotations

import math

import pytest
from ptdeploy.capacity.planner import (
    CapacityPlan,
    Verdict,
    Workload,
    assess_provisioning,
    plan_capacity,
)
from ptdeploy.errors import ParameterError, PtdeployError, ThroughputError


def test_documented_recipe_two_and_three_chunks():
    # The doc's recipe: min = 2 * chunk_size, max = 3 * chunk_size, chunk 980.
    # 300 input + 100 output = 400 tokens/request (input and output both count).
    # Rest: 3 req/s * 400 = 1200 tokens/s; * 1.2 = 1440; 1440 / 980 = 1.47 -> 2 chunks.
    # Peak: 5 req/s * 400 = 2000 tokens/s; * 1.2 = 2400; 2400 / 980 = 2.45 -> 3 chunks.
    plan = plan_capacity(
        Workload(
            peak_requests_per_second=5,
            rest_requests_per_second=3,
            mean_input_tokens=300,
            mean_output_tokens=100,
        ),
        chunk_size=980,
    )
    assert plan.tokens_per_request == 400
    assert plan.rest_tokens_per_second == 1200
    assert plan.peak_tokens_per_second == 2000
    assert plan.rest_target_tokens_per_second == pytest.approx(1440)
    assert plan.peak_target_tokens_per_second == pytest.approx(2400)
    assert (plan.min_chunks, plan.max_chunks) == (2, 3)
    assert plan.served_entity_fields() == {
        "min_provisioned_throughput": 1960,
        "max_provisioned_throughput": 2940,
        "scale_to_zero_enabled": False,
    }
    assert plan.warnings == ()

    text = "\n".join(plan.explain())
    for step in ("400 tokens per request", "1200 tokens/s", "1440 tokens/s", "2400 tokens/s"):
        assert step in text
    assert "ceil(1440 / 980) = 2 chunk(s)" in text
    assert "ceil(2400 / 980) = 3 chunk(s)" in text
    assert "min_provisioned_throughput=1960" in text
    assert "max_provisioned_throughput=2940" in text


def test_exact_multiple_is_not_rounded_up_by_float_noise():
    # 1.1 req/s * (1000 + 500) = 1650 tokens/s; * 1.2 = 1980 = exactly 2 chunks of 990.
    # In floats 1.1 * 1500 * 1.2 is 1980.0000000000002: it must not buy a third chunk.
    plan = plan_capacity(Workload(1.1, 1.1, 1000, 500), chunk_size=990)
    assert (plan.min_chunks, plan.max_chunks) == (2, 2)
    assert plan.min_provisioned_throughput == plan.max_provisioned_throughput == 1980


def test_embeddings_count_input_tokens_only():
    # Rest: 10 * 128 = 1280; * 1.2 = 1536; / 1580 = 0.97 -> 1 chunk = 1580.
    # Peak: 50 * 128 = 6400; * 1.2 = 7680; / 1580 = 4.86 -> 5 chunks = 7900.
    plan = plan_capacity(Workload(50, 10, 128, 0), chunk_size=1580)
    assert plan.min_provisioned_throughput == 1580
    assert plan.max_provisioned_throughput == 7900


def test_headroom_one_sizes_exactly():
    # Rest 1 * 490 = 490 -> 1 chunk of 980; peak 2 * 490 = 980 -> exactly 1 chunk.
    plan = plan_capacity(Workload(2, 1, 400, 90), chunk_size=980, headroom=1.0)
    assert (plan.min_chunks, plan.max_chunks) == (1, 1)
    # The default headroom (1.2) makes the peak 1176 -> 2 chunks.
    assert plan_capacity(Workload(2, 1, 400, 90), chunk_size=980).max_chunks == 2


def test_idle_at_rest_without_target_suggests_scale_to_zero():
    # Rest 0 -> 0 chunks; peak 0.5 * 1000 = 500; * 1.2 = 600 -> 1 chunk of 980.
    plan = plan_capacity(Workload(0.5, 0, 900, 100), chunk_size=980)
    assert plan.scale_to_zero_enabled is True
    assert plan.min_provisioned_throughput == 0
    assert plan.max_provisioned_throughput == 980
    assert plan.warnings == ()


def test_latency_target_keeps_one_chunk_warm_and_warns():
    plan = plan_capacity(Workload(2, 0, 500, 200, p95_latency_target_s=2.0), chunk_size=980)
    assert plan.scale_to_zero_enabled is False
    assert plan.min_provisioned_throughput == 980
    # Peak 2 * 700 = 1400; * 1.2 = 1680 -> 2 chunks.
    assert plan.max_provisioned_throughput == 1960
    assert len(plan.warnings) == 1
    assert "latency target" in plan.warnings[0] and "cold start" in plan.warnings[0]
    assert any(line.startswith("Warning: ") for line in plan.explain())


def test_forced_scale_to_zero_warns_on_rest_load_and_latency_target():
    plan = plan_capacity(
        Workload(5, 3, 300, 100, p95_latency_target_s=1.5), chunk_size=980, scale_to_zero=True
    )
    assert plan.scale_to_zero_enabled is True
    # Scale to zero needs min 0; the rest load (1440 tokens/s -> 2 chunks) is named.
    assert plan.min_provisioned_throughput == 0
    assert plan.max_provisioned_throughput == 2940
    joined = " ".join(plan.warnings)
    assert "1.5 s" in joined and "cold start" in joined
    assert "3 req/s at rest" in joined and "2 chunk(s)" in joined
    assert len(plan.warnings) == 2
    assert "set to 0 (scale to zero needs min 0)" in "\n".join(plan.explain())


def test_forced_no_scale_to_zero_keeps_one_chunk():
    plan = plan_capacity(Workload(0.5, 0, 900, 100), chunk_size=980, scale_to_zero=False)
    assert plan.scale_to_zero_enabled is False
    assert plan.min_provisioned_throughput == 980
    assert len(plan.warnings) == 1


@pytest.mark.parametrize(
    ("workload", "scale_to_zero"),
    [
        (Workload(5, 3, 300, 100), None),
        (Workload(0.5, 0, 900, 100), None),
        (Workload(5, 3, 300, 100, p95_latency_target_s=1.5), True),
        (Workload(0.5, 0, 900, 100), False),
    ],
)
def test_plans_are_accepted_by_the_deployment_validation(workload, scale_to_zero):
    plan = plan_capacity(workload, chunk_size=980, scale_to_zero=scale_to_zero)
    deployable = plan.throughput_plan()  # ptdeploy.serving.throughput validates the values
    assert deployable.served_entity_kwargs() == plan.served_entity_fields()


def test_plan_is_a_dataclass_with_dict_form():
    plan = plan_capacity(Workload(5, 3, 300, 100), chunk_size=980)
    assert isinstance(plan, CapacityPlan)
    data = plan.as_dict()
    assert data["min_provisioned_throughput"] == 1960
    assert data["workload"]["peak_requests_per_second"] == 5


@pytest.mark.parametrize(
    ("kwargs", "field", "shown"),
    [
        (dict(peak_requests_per_second=-1), "peak_requests_per_second", "-1"),
        (dict(peak_requests_per_second=0), "peak_requests_per_second", "0"),
        (dict(rest_requests_per_second="3"), "rest_requests_per_second", "'3'"),
        (dict(rest_requests_per_second=True), "rest_requests_per_second", "True"),
        (dict(mean_input_tokens=math.nan), "mean_input_tokens", "nan"),
        (dict(mean_output_tokens=-5), "mean_output_tokens", "-5"),
        (dict(rest_requests_per_second=9), "rest_requests_per_second", "9"),  # > peak
        (dict(mean_input_tokens=0, mean_output_tokens=0), "mean_input_tokens", "0"),
        (dict(p95_latency_target_s=0), "p95_latency_target_s", "0"),
        (dict(p95_latency_target_s="fast"), "p95_latency_target_s", "'fast'"),
    ],
)
def test_invalid_workload_names_field_and_value(kwargs, field, shown):
    base = dict(
        peak_requests_per_second=5,
        rest_requests_per_second=3,
        mean_input_tokens=300,
        mean_output_tokens=100,
    )
    with pytest.raises(ParameterError) as info:
        Workload(**(base | kwargs))
    message = str(info.value)
    assert field in message and shown in message and "expected" in message
    assert isinstance(info.value, ValueError) and isinstance(info.value, PtdeployError)


@pytest.mark.parametrize("chunk", [0, -980, 980.5, "980", None, True])
def test_invalid_chunk_size(chunk):
    with pytest.raises(ThroughputError, match="chunk_size") as info:
        plan_capacity(Workload(5, 3, 300, 100), chunk_size=chunk)
    assert isinstance(info.value, ValueError)


def test_float_chunk_size_that_is_whole_is_accepted():
    assert (
        plan_capacity(Workload(5, 3, 300, 100), chunk_size=980.0).max_provisioned_throughput == 2940
    )


@pytest.mark.parametrize("headroom", [0.9, -1, "1.2"])
def test_invalid_headroom(headroom):
    with pytest.raises(ParameterError, match="headroom"):
        plan_capacity(Workload(5, 3, 300, 100), chunk_size=980, headroom=headroom)


def test_invalid_scale_to_zero_and_workload_type():
    with pytest.raises(ParameterError, match="scale_to_zero"):
        plan_capacity(Workload(5, 3, 300, 100), chunk_size=980, scale_to_zero="yes")
    with pytest.raises(ParameterError, match="workload"):
        plan_capacity({"peak_requests_per_second": 5}, chunk_size=980)


# --------------------------------------------------------------------------- assessment


def test_assess_over_provisioned():
    # 1500 tokens/s * 1.2 = 1800 -> ceil(1800 / 980) = 2 chunks, the max has 3.
    a = assess_provisioning(1960, 2940, 1500, 980)
    assert a.verdict is Verdict.OVER
    assert a.ratio == pytest.approx(1500 / 2940)
    assert a.required_tokens_per_second == pytest.approx(1800)
    assert a.recommended_max_provisioned_throughput == 1960
    assert any("over-provisioned" in line for line in a.explain())


def test_assess_under_provisioned():
    # 2500 * 1.2 = 3000 -> ceil(3.06) = 4 chunks > 3.
    a = assess_provisioning(1960, 2940, 2500, 980)
    assert a.verdict is Verdict.UNDER
    assert a.ratio == pytest.approx(2500 / 2940)
    assert a.recommended_max_provisioned_throughput == 3920
    text = "\n".join(a.explain())
    assert "under-provisioned" in text and "3920" in text


def test_assess_right_sized():
    # 2000 * 1.2 = 2400 -> 3 chunks = the max.
    a = assess_provisioning(1960, 2940, 2000, 980)
    assert a.verdict is Verdict.RIGHT
    assert a.as_dict()["verdict"] == "right-sized"


def test_assess_idle_endpoint_flags_the_minimum():
    a = assess_provisioning(1960, 2940, 0, 980)
    assert a.verdict is Verdict.OVER
    assert a.recommended_max_provisioned_throughput == 980  # max must stay > 0
    assert any("minimum alone" in line for line in a.explain())


def test_plan_then_assess_at_planned_peak_is_right_sized():
    plan = plan_capacity(Workload(5, 3, 300, 100), chunk_size=980)
    a = assess_provisioning(
        plan.min_provisioned_throughput,
        plan.max_provisioned_throughput,
        plan.peak_tokens_per_second,
        plan.chunk_size,
    )
    assert a.verdict is Verdict.RIGHT


@pytest.mark.parametrize(
    ("args", "error", "field"),
    [
        ((1000, 2940, 100, 980), ThroughputError, "min_provisioned_throughput"),  # not a multiple
        ((980, 2000, 100, 980), ThroughputError, "max_provisioned_throughput"),  # not a multiple
        ((2940, 1960, 100, 980), ThroughputError, "min_provisioned_throughput"),  # min > max
        ((0, 0, 100, 980), ThroughputError, "max_provisioned_throughput"),  # max must be > 0
        ((980, 1960, -5, 980), ParameterError, "measured_tokens_per_second"),
        ((980, 1960, "fast", 980), ParameterError, "measured_tokens_per_second"),
        ((980, 1960, 100, 0), ThroughputError, "chunk_size"),
    ],
)
def test_assess_validation(args, error, field):
    with pytest.raises(error, match=field):
        assess_provisioning(*args)
