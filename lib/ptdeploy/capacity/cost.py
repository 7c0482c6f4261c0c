"""What provisioned capacity costs: per hour and per month, at min, at max and when idle.

Provisioned throughput is billed for the capacity the endpoint holds, not for the tokens
it serves: Databricks bills Model Serving in DBUs per hour of provisioned capacity (the
``<tier>_SERVERLESS_REAL_TIME_INFERENCE_<region>`` SKU in ``system.billing.usage``), and an
endpoint that autoscales between its min and max is billed for what it actually held
("Attributing costs in Databricks Model Serving", Databricks technical blog; "Databricks
only charges for the actual compute used"). So the cost of a plan is a range:

- at min: ``min units x DBU/hour per unit x price per DBU`` (what a quiet endpoint costs);
- at max: the same with the max units (a whole hour at peak);
- idle with scale-to-zero: nothing while scaled to zero (min is 0 then).

Prices are never hard-coded here: they depend on the model, the cloud, the region, the
tier and any contract. The user gives them (:class:`Pricing`):

- ``dbu_per_hour_per_unit``: the DBUs one throughput chunk (``throughput_chunk_size``
  tokens/s) or one model unit consumes per hour, from the model's row on the
  Databricks pricing page for Foundation Model Serving
  (https://www.databricks.com/product/pricing/foundation-model-serving) or the serving
  UI's estimate for the chosen throughput band;
- ``price_per_dbu``: the list price of one DBU of that SKU, ``pricing.default`` in the
  ``system.billing.list_prices`` system table
  (https://docs.databricks.com/admin/system-tables/pricing.html) or your contract.

A month is 730 hours (8,760 / 12), the convention cloud price calculators use.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ptdeploy.errors import ParameterError

HOURS_PER_MONTH = 730.0
PRICING_SOURCES = (
    "DBU/hour per unit: https://www.databricks.com/product/pricing/foundation-model-serving; "
    "price per DBU: pricing.default in system.billing.list_prices "
    "(https://docs.databricks.com/admin/system-tables/pricing.html)"
)

__all__ = ["HOURS_PER_MONTH", "CostEstimate", "Pricing", "estimate_cost", "pricing_from"]


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParameterError(
            f"{name}: got {value!r}; expected a positive number ({PRICING_SOURCES})."
        )
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise ParameterError(
            f"{name}: got {value!r}; expected a positive number ({PRICING_SOURCES})."
        )
    return number


@dataclass(frozen=True)
class Pricing:
    """The price of provisioned capacity, as the user's workspace is billed for it."""

    dbu_per_hour_per_unit: float
    price_per_dbu: float
    currency: str = "USD"

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "dbu_per_hour_per_unit",
            _positive("dbu_per_hour_per_unit", self.dbu_per_hour_per_unit),
        )
        object.__setattr__(self, "price_per_dbu", _positive("price_per_dbu", self.price_per_dbu))
        if not isinstance(self.currency, str) or not self.currency.strip():
            raise ParameterError(
                f"currency: got {self.currency!r}; expected a currency code such as 'USD' "
                "(currency_code in system.billing.list_prices)."
            )

    @property
    def per_unit_hour(self) -> float:
        """What one chunk (or model unit) costs for one hour."""
        return self.dbu_per_hour_per_unit * self.price_per_dbu


def pricing_from(
    dbu_per_hour_per_unit: float | None, price_per_dbu: float | None, currency: str = "USD"
) -> Pricing | None:
    """A :class:`Pricing` from optional values: None when neither is given.

    Giving one without the other is an error: a cost needs both.
    """
    given = {
        "dbu_per_hour_per_unit": dbu_per_hour_per_unit,
        "price_per_dbu": price_per_dbu,
    }
    missing = [name for name, value in given.items() if value is None]
    if len(missing) == 2:
        return None
    if missing:
        have = next(name for name in given if name not in missing)
        raise ParameterError(
            f"{missing[0]}: missing; {have} was given and a cost needs both "
            f"({PRICING_SOURCES}). Give {missing[0]} too, or neither to skip the cost."
        )
    return Pricing(dbu_per_hour_per_unit, price_per_dbu, currency)  # type: ignore[arg-type]


@dataclass(frozen=True)
class CostEstimate:
    """Cost of holding ``min_units`` to ``max_units`` of provisioned capacity."""

    pricing: Pricing
    min_units: int
    max_units: int
    scale_to_zero: bool
    per_hour_at_min: float
    per_hour_at_max: float
    per_month_at_min: float
    per_month_at_max: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def explain(self) -> list[str]:
        p = self.pricing
        c = p.currency
        lines = [
            f"Cost: {_money(p.dbu_per_hour_per_unit, '')} DBU/hour per unit x "
            f"{_money(p.price_per_dbu, c)} per DBU = {_money(p.per_unit_hour, c)} per unit-hour "
            f"(prices as given; sources: {PRICING_SOURCES}).",
            f"At min ({self.min_units} unit(s)): {_money(self.per_hour_at_min, c)}/hour, "
            f"{_money(self.per_month_at_min, c)}/month if it never scales up.",
            f"At max ({self.max_units} unit(s)): {_money(self.per_hour_at_max, c)}/hour, "
            f"{_money(self.per_month_at_max, c)}/month if it stays at peak "
            f"({HOURS_PER_MONTH:.0f} hours a month).",
        ]
        if self.scale_to_zero:
            lines.append(
                "Scale to zero: nothing is billed for capacity while scaled to zero; the DBUs "
                "a start after scaling to zero accrues are billed under the "
                "SERVERLESS_REAL_TIME_INFERENCE_LAUNCH SKU."
            )
        return lines


def _money(value: float, currency: str) -> str:
    text = f"{value:,.2f}" if value >= 1 or value == 0 else f"{value:.4g}"
    return f"{text} {currency}".strip()


def estimate_cost(
    min_units: int, max_units: int, pricing: Pricing, *, scale_to_zero: bool = False
) -> CostEstimate:
    """The cost range of an endpoint provisioned between ``min_units`` and ``max_units``.

    Units are throughput chunks (``min_provisioned_throughput / throughput_chunk_size``)
    or model units (``provisioned_model_units``).
    """
    if not isinstance(pricing, Pricing):
        raise ParameterError(
            f"pricing: got {type(pricing).__name__}; expected a ptdeploy.capacity.cost.Pricing."
        )
    for name, value in (("min_units", min_units), ("max_units", max_units)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ParameterError(f"{name}: got {value!r}; expected a whole number >= 0.")
    if min_units > max_units:
        raise ParameterError(
            f"min_units: got {min_units}, more than max_units={max_units}; expected min <= max."
        )
    hourly = pricing.per_unit_hour
    return CostEstimate(
        pricing=pricing,
        min_units=min_units,
        max_units=max_units,
        scale_to_zero=bool(scale_to_zero),
        per_hour_at_min=min_units * hourly,
        per_hour_at_max=max_units * hourly,
        per_month_at_min=min_units * hourly * HOURS_PER_MONTH,
        per_month_at_max=max_units * hourly * HOURS_PER_MONTH,
    )
