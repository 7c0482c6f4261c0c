"""Cost of provisioned capacity: prices the user gives, per hour and per month, in the plan."""

from __future__ import annotations

import math

import pytest
from ptdeploy import cli
from ptdeploy.capacity.cost import HOURS_PER_MONTH, Pricing, estimate_cost, pricing_from
from ptdeploy.capacity.planner import Workload, assess_provisioning, plan_capacity
from ptdeploy.errors import ParameterError

CHUNK = 980
# 85.714 DBU/hour per chunk at 0.07 per DBU: 6.00 per chunk-hour (round numbers to check)
PRICE = Pricing(dbu_per_hour_per_unit=85.714, price_per_dbu=0.07)
UNIT_HOUR = 85.714 * 0.07


def test_cost_range_per_hour_and_month():
    cost = estimate_cost(2, 3, PRICE)
    assert cost.per_hour_at_min == pytest.approx(2 * UNIT_HOUR)
    assert cost.per_hour_at_max == pytest.approx(3 * UNIT_HOUR)
    assert cost.per_month_at_max == pytest.approx(3 * UNIT_HOUR * HOURS_PER_MONTH)
    text = "\n".join(cost.explain())
    assert "12.00 USD/hour" in text and "18.00 USD/hour" in text
    assert "system.billing.list_prices" in text  # where the prices come from


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("dbu_per_hour_per_unit", 0),
        ("dbu_per_hour_per_unit", -1.5),
        ("dbu_per_hour_per_unit", math.nan),
        ("price_per_dbu", math.inf),
        ("price_per_dbu", True),
        ("price_per_dbu", "0.07"),
    ],
)
def test_a_price_that_is_not_a_positive_number_is_refused(field, value):
    kwargs = {"dbu_per_hour_per_unit": 85.714, "price_per_dbu": 0.07, field: value}
    with pytest.raises(ParameterError, match=rf"^{field}: got .*expected a positive number"):
        Pricing(**kwargs)


def test_pricing_needs_both_values_or_neither():
    assert pricing_from(None, None) is None
    with pytest.raises(ParameterError, match="^price_per_dbu: missing"):
        pricing_from(85.714, None)
    with pytest.raises(ParameterError, match="^currency"):
        pricing_from(1.0, 1.0, currency=" ")


def test_min_above_max_is_refused():
    with pytest.raises(ParameterError, match="^min_units"):
        estimate_cost(3, 2, PRICE)


def test_plan_carries_its_cost_and_scale_to_zero_costs_nothing_at_rest():
    busy = plan_capacity(Workload(5, 3, 300, 100), CHUNK, pricing=PRICE)
    assert (busy.min_chunks, busy.max_chunks) == (2, 3)
    assert busy.cost.per_hour_at_min == pytest.approx(2 * UNIT_HOUR)
    assert any(line.startswith("At max (3 unit(s))") for line in busy.explain())
    idle = plan_capacity(Workload(5, 0, 300, 100), CHUNK, pricing=PRICE)
    assert idle.scale_to_zero_enabled and idle.cost.per_hour_at_min == 0
    assert any("Scale to zero" in line for line in idle.explain())
    assert plan_capacity(Workload(5, 3, 300, 100), CHUNK).cost is None  # no price, no cost


def test_assessment_prices_the_deployed_and_the_recommended_max():
    over = assess_provisioning(CHUNK, 5 * CHUNK, 1000, CHUNK, pricing=PRICE)
    assert over.recommended_max_provisioned_throughput == 2 * CHUNK
    assert over.deployed_cost.per_hour_at_max == pytest.approx(5 * UNIT_HOUR)
    assert over.recommended_cost.per_hour_at_max == pytest.approx(2 * UNIT_HOUR)
    assert any(line.startswith("Cost at max: 30.00 USD/hour") for line in over.explain())


def test_cli_plan_prints_the_cost(capsys):
    argv = "plan --peak-rps 5 --rest-rps 3 --input-tokens 300 --output-tokens 100"
    rc = cli.main(
        [*argv.split(), "--chunk-size", "980", "--dbu-per-hour-per-unit", "85.714"]
        + ["--price-per-dbu", "0.07"]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "min_provisioned_throughput=1960" in out and "At max (3 unit(s)): 18.00 USD" in out


def test_cli_plan_with_half_a_price_fails_naming_the_missing_one(capsys):
    rc = cli.main(
        [
            "plan",
            "--peak-rps",
            "5",
            "--input-tokens",
            "3",
            "--output-tokens",
            "1",
            "--chunk-size",
            "980",
            "--price-per-dbu",
            "0.07",
        ]
    )
    assert rc == 2
    assert "dbu_per_hour_per_unit: missing" in capsys.readouterr().err
