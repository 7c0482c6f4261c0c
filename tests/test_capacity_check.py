"""The planner meets the load test: verdicts on worked examples."""

from __future__ import annotations

import pytest
from databricks.sdk.service.serving import ServingEndpointDetailed
from ptdeploy.capacity.capacity_check import DeployedThroughput, check_capacity, deployed_throughput
from ptdeploy.capacity.loadtest import LevelResult, LoadTestResult, Sample, build_payload
from ptdeploy.capacity.planner import Verdict, Workload
from ptdeploy.errors import ThroughputError

CHUNK = 980
# 5 req/s x (300 + 100) tokens = 2000 tokens/s at peak; x1.2 = 2400 -> 3 chunks (2940).
# 3 req/s at rest -> 1440 -> 2 chunks (1960): the documented recipe, min 2 / max 3 chunks.
RECIPE = Workload(5, 3, 300, 100, p95_latency_target_s=2.0)


def deployed(min_chunks: int, max_chunks: int) -> DeployedThroughput:
    return DeployedThroughput(
        "ep", (("main.default.m", "1"),), min_chunks * CHUNK, max_chunks * CHUNK, False
    )


def result(*levels: tuple[int, float | None, float], tokens_per_request: int = 400):
    """Levels of (concurrency, total tokens/s or None for no usage, p95 latency)."""
    made, samples = [], []
    for concurrency, tps, p95 in levels:
        rps = (tps or 400.0) / tokens_per_request
        made.append(
            LevelResult(
                concurrency=concurrency,
                requests=10,
                errors=0,
                duration_s=10 / rps,
                requests_per_second=rps,
                output_tokens_per_second=None if tps is None else tps / 4,
                total_tokens_per_second=tps,
                p50_latency_s=p95 / 2,
                p95_latency_s=p95,
                p99_latency_s=p95,
                mean_latency_s=p95 / 2,
                stop_reason="requests",
            )
        )
        usage = {} if tps is None else {"input_tokens": 300, "total_tokens": tokens_per_request}
        samples += [Sample(concurrency, i, 0.0, p95 / 2, True, **usage) for i in range(10)]
    payload = build_payload("completions")
    return LoadTestResult("ep", payload.task, payload, 10, 30.0, made, samples, "now")


def test_documented_recipe_deployed_and_confirmed_is_right_sized():
    check = check_capacity(RECIPE, deployed(2, 3), CHUNK, result((1, 900, 0.5), (8, 3000, 1.5)))
    assert check.plan.min_chunks == 2 and check.plan.max_chunks == 3
    assert check.verdict is Verdict.RIGHT
    assert check.level.concurrency == 8 and check.measured_tokens_per_second == 3000
    assert check.needed_tokens_per_second == pytest.approx(2400)
    assert check.measured_tokens_per_request == 400
    assert check.lower_bound  # the highest level was the best one
    assert check.delivered_share_of_max == pytest.approx(3000 / 2940)
    text = "\n".join(check.explain())
    assert "Verdict: right-sized" in text and "not saturated" in text


def test_more_chunks_than_the_plan_needs_is_over_provisioned():
    check = check_capacity(RECIPE, deployed(2, 5), CHUNK, result((4, 3000, 1.0), (8, 3100, 1.9)))
    assert check.verdict is Verdict.OVER
    assert check.nominal.recommended_max_provisioned_throughput == 3 * CHUNK
    assert any("2940 tokens/s would cover" in r for r in check.reasons)


def test_measured_capacity_below_the_planned_peak_is_under_provisioned():
    """Nominally enough chunks, but the endpoint delivers less than the peak needs."""
    check = check_capacity(RECIPE, deployed(2, 3), CHUNK, result((1, 800, 0.4), (8, 2100, 1.8)))
    assert check.nominal.verdict is Verdict.RIGHT
    assert check.verdict is Verdict.UNDER
    assert any("delivered 2,100 tokens/s" in r and "2,400" in r for r in check.reasons)


def test_a_max_below_the_plan_is_under_provisioned_even_if_the_test_kept_up():
    check = check_capacity(RECIPE, deployed(1, 2), CHUNK, result((8, 5000, 1.0)))
    assert check.verdict is Verdict.UNDER
    assert any("below the 2940 tokens/s" in r for r in check.reasons)


def test_no_level_within_the_p95_target_is_under_provisioned():
    check = check_capacity(RECIPE, deployed(2, 3), CHUNK, result((1, 900, 2.5), (8, 3000, 6.0)))
    assert check.level is None and check.measured_tokens_per_second is None
    assert check.verdict is Verdict.UNDER
    assert "no concurrency level met the p95 latency target" in check.reasons
    assert "no concurrency level succeeded within the p95 target of 2 s" in "\n".join(
        check.explain()
    )


def test_the_p95_target_picks_the_level_and_a_saturated_endpoint_is_not_a_lower_bound():
    check = check_capacity(
        RECIPE, deployed(2, 3), CHUNK, result((4, 2600, 1.0), (8, 3000, 1.9), (16, 3100, 4.0))
    )
    assert check.level.concurrency == 8 and not check.lower_bound
    relaxed = check_capacity(
        RECIPE,
        deployed(2, 3),
        CHUNK,
        result((4, 2600, 1.0), (8, 3000, 1.9), (16, 3100, 4.0)),
        p95_latency_target_s=5.0,
    )
    assert relaxed.level.concurrency == 16 and relaxed.lower_bound


def test_without_usage_only_the_nominal_check_applies():
    check = check_capacity(RECIPE, deployed(2, 3), CHUNK, result((8, None, 1.0)))
    assert check.measured_tokens_per_second is None and check.level.concurrency == 8
    assert check.verdict is Verdict.RIGHT
    assert "reported no token usage" in "\n".join(check.explain())


def test_a_min_above_the_rest_load_is_pointed_out():
    check = check_capacity(RECIPE, deployed(3, 3), CHUNK, result((8, 3000, 1.0)))
    assert check.verdict is Verdict.RIGHT
    assert any("billed even when idle" in r for r in check.reasons)


def test_invalid_inputs_name_the_field():
    with pytest.raises(ThroughputError, match="deployed"):
        check_capacity(RECIPE, {"max": 1}, CHUNK, result((1, 10, 0.1)))  # type: ignore[arg-type]
    with pytest.raises(ThroughputError, match="result"):
        check_capacity(RECIPE, deployed(2, 3), CHUNK, [])  # type: ignore[arg-type]
    with pytest.raises(ThroughputError, match="max_provisioned_throughput: got 1000"):
        check_capacity(
            RECIPE, DeployedThroughput("ep", (), 0, 1000, False), CHUNK, result((1, 10, 0.1))
        )


def _endpoint(*entities: dict) -> ServingEndpointDetailed:
    return ServingEndpointDetailed.from_dict(
        {"name": "ep", "config": {"served_entities": list(entities)}}
    )


def test_deployed_throughput_sums_the_served_entities():
    ep = _endpoint(
        {
            "entity_name": "m",
            "entity_version": "1",
            "min_provisioned_throughput": 980,
            "max_provisioned_throughput": 1960,
        },
        {
            "entity_name": "m",
            "entity_version": "2",
            "min_provisioned_throughput": 0,
            "max_provisioned_throughput": 980,
            "scale_to_zero_enabled": True,
        },
    )
    got = deployed_throughput(ep)
    assert (got.min_provisioned_throughput, got.max_provisioned_throughput) == (980, 2940)
    assert got.entities == (("m", "1"), ("m", "2")) and got.scale_to_zero_enabled
    assert "min 980 / max 2940 tokens/s" in got.describe()


def test_deployed_throughput_refuses_an_endpoint_not_sized_in_tokens_per_second():
    ep = _endpoint({"entity_name": "m", "entity_version": "1", "provisioned_model_units": 50})
    with pytest.raises(ThroughputError, match="'ep'.*provisioned_model_units"):
        deployed_throughput(ep)
    with pytest.raises(ThroughputError, match="no served entity in its current config"):
        deployed_throughput(ServingEndpointDetailed.from_dict({"name": "ep"}))
