"""The planner meets the load test: is a deployed endpoint over- or under-provisioned?

Two sources of truth meet here:

* **What the planner assumed.** A :class:`~ptdeploy.capacity.planner.Workload` (peak and rest
  requests/s, mean tokens per request) needs ``peak_tokens_per_second`` at peak; with the
  planner's headroom that is a number of chunks. :func:`ptdeploy.capacity.planner.assess_provisioning`
  compares it with the deployed ``max_provisioned_throughput``: the *nominal* verdict,
  which trusts that one chunk delivers ``throughput_chunk_size`` tokens/s.
* **What the load test measured.** The best concurrency level that met the p95 latency
  target (:meth:`ptdeploy.capacity.loadtest.LoadTestResult.best_level`) delivered some total
  tokens/s (input + output, the unit provisioned throughput is sold in). That is the
  capacity the endpoint *showed* for this payload.

The verdict (:func:`check_capacity`):

* **under-provisioned** when no level met the p95 target, when the measured capacity is
  below the planner's peak tokens/s times the headroom (the chunks do not deliver their
  nominal size for this token mix, or the endpoint has not scaled up), or when the
  deployed max is nominally below what the planner needs;
* otherwise the nominal verdict: **over-provisioned** when fewer chunks than the max cover
  the planned peak with headroom, **right-sized** when the max is exactly that.

A closed-loop load test only shows a lower bound of the capacity when its highest
concurrency level was still the best one (the endpoint was not saturated); the check says
so, because "enough" then may hide "far more than enough". Pure functions: the notebook
(``ptdeploy.templates.flow``) reads the endpoint and the chunk size and passes them in.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ptdeploy.capacity.cost import Pricing
from ptdeploy.capacity.loadtest import LevelResult, LoadTestResult
from ptdeploy.capacity.planner import (
    DEFAULT_HEADROOM,
    CapacityPlan,
    ProvisioningAssessment,
    Verdict,
    Workload,
    assess_provisioning,
    plan_capacity,
)
from ptdeploy.errors import ThroughputError

__all__ = ["CapacityCheck", "DeployedThroughput", "check_capacity", "deployed_throughput"]


@dataclass(frozen=True)
class DeployedThroughput:
    """The provisioned tokens/s an endpoint's config serves, summed over its served entities
    (traffic is split between them, so their capacities add up)."""

    endpoint: str
    entities: tuple[tuple[str, str], ...]  # (entity_name, entity_version) per served entity
    min_provisioned_throughput: int
    max_provisioned_throughput: int
    scale_to_zero_enabled: bool

    def describe(self) -> str:
        served = ", ".join(f"{name} v{version}" for name, version in self.entities)
        return (
            f"{self.endpoint}: min {self.min_provisioned_throughput} / max "
            f"{self.max_provisioned_throughput} tokens/s, scale to zero "
            f"{'on' if self.scale_to_zero_enabled else 'off'} ({served})"
        )


def deployed_throughput(endpoint: Any) -> DeployedThroughput:
    """Min/max provisioned throughput of ``endpoint`` (a ``ServingEndpointDetailed``).

    Raises :class:`~ptdeploy.errors.ThroughputError` naming the endpoint when its current
    config has no served entity with ``max_provisioned_throughput`` (an endpoint sized in
    model units or by workload size, or one that is still being created): the planner
    reasons in tokens/s only.
    """
    name = getattr(endpoint, "name", None) or "?"
    config = getattr(endpoint, "config", None)
    entities = list(getattr(config, "served_entities", None) or [])
    sized = [e for e in entities if getattr(e, "max_provisioned_throughput", None) is not None]
    if not sized:
        kinds = sorted(
            {
                "provisioned_model_units"
                if getattr(e, "provisioned_model_units", None)
                else "workload_size"
                if getattr(e, "workload_size", None)
                else "no size"
                for e in entities
            }
        )
        what = ", ".join(kinds) if kinds else "no served entity in its current config"
        raise ThroughputError(
            f"endpoint {name!r}: no served entity has max_provisioned_throughput ({what}); "
            "the capacity check compares provisioned tokens/s, so it needs an endpoint "
            "deployed with min/max_provisioned_throughput."
        )
    return DeployedThroughput(
        endpoint=name,
        entities=tuple((str(e.entity_name), str(e.entity_version)) for e in sized),
        min_provisioned_throughput=sum(int(e.min_provisioned_throughput or 0) for e in sized),
        max_provisioned_throughput=sum(int(e.max_provisioned_throughput) for e in sized),
        scale_to_zero_enabled=any(bool(e.scale_to_zero_enabled) for e in sized),
    )


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


@dataclass(frozen=True)
class CapacityCheck:
    """The planner's assumptions, the deployed min/max and the load test, side by side."""

    verdict: Verdict
    reasons: tuple[str, ...]
    workload: Workload
    deployed: DeployedThroughput
    chunk_size: int
    headroom: float
    plan: CapacityPlan  # what the planner proposes for the workload
    nominal: ProvisioningAssessment  # the deployed max against the planned peak
    needed_tokens_per_second: float  # planned peak x headroom
    level: LevelResult | None  # the level taken as measured capacity (None: none qualified)
    measured_tokens_per_second: float | None
    measured_tokens_per_request: float | None
    lower_bound: bool  # the best level was the highest one: capacity may be larger
    p95_latency_target_s: float | None

    @property
    def delivered_share_of_max(self) -> float | None:
        """Measured tokens/s over the deployed max: how much of the provisioned capacity
        the endpoint delivered under this test's load."""
        if self.measured_tokens_per_second is None:
            return None
        return self.measured_tokens_per_second / self.deployed.max_provisioned_throughput

    def explain(self) -> list[str]:
        w = self.workload
        lines = [
            f"Planner: {_fmt(w.peak_requests_per_second)} req/s at peak x "
            f"{_fmt(w.tokens_per_request)} tokens = {_fmt(w.peak_tokens_per_second)} tokens/s; "
            f"x{self.headroom:g} headroom = {_fmt(self.needed_tokens_per_second)} tokens/s -> "
            f"min {self.plan.min_provisioned_throughput} / max "
            f"{self.plan.max_provisioned_throughput} tokens/s "
            f"({self.plan.min_chunks}..{self.plan.max_chunks} chunk(s) of {self.chunk_size}).",
            f"Deployed: {self.deployed.describe()}.",
        ]
        if self.level is None:
            target = (
                f"the p95 target of {self.p95_latency_target_s:g} s"
                if self.p95_latency_target_s is not None
                else "any latency"
            )
            lines.append(f"Measured: no concurrency level succeeded within {target}.")
        elif self.measured_tokens_per_second is None:
            lines.append(
                f"Measured: best level concurrency {self.level.concurrency} "
                f"({_fmt(self.level.requests_per_second or 0)} req/s), but the endpoint "
                "reported no token usage: only the nominal check applies."
            )
        else:
            share = self.delivered_share_of_max or 0.0
            per_request = (
                f", {_fmt(self.measured_tokens_per_request)} tokens per request (the planner "
                f"assumed {_fmt(w.tokens_per_request)})"
                if self.measured_tokens_per_request is not None
                else ""
            )
            lines.append(
                f"Measured: {_fmt(self.measured_tokens_per_second)} tokens/s at concurrency "
                f"{self.level.concurrency} (p95 {self.level.p95_latency_s:.3f} s){per_request}; "
                f"{share:.0%} of the deployed max."
            )
            if self.lower_bound:
                lines.append(
                    "The highest concurrency level was the best one: the endpoint was not "
                    "saturated, so its capacity is at least this (add higher levels to find "
                    "the plateau)."
                )
        lines.extend(f"Why: {reason}" for reason in self.reasons)
        lines.append(f"Verdict: {self.verdict.value}.")
        lines.extend(self.cost_lines())
        return lines

    def cost_lines(self) -> list[str]:
        """Cost as deployed and as planned, when a Pricing was given (else nothing)."""
        deployed, planned = self.nominal.deployed_cost, self.plan.cost
        if deployed is None or planned is None:
            return []
        c = deployed.pricing.currency
        return [
            f"Cost as deployed: {deployed.per_hour_at_min:,.2f} {c}/hour at min, "
            f"{deployed.per_hour_at_max:,.2f} {c}/hour at max "
            f"({deployed.per_month_at_min:,.2f}..{deployed.per_month_at_max:,.2f} {c}/month).",
            f"Cost as planned: {planned.per_hour_at_min:,.2f} {c}/hour at min, "
            f"{planned.per_hour_at_max:,.2f} {c}/hour at max "
            f"({planned.per_month_at_min:,.2f}..{planned.per_month_at_max:,.2f} {c}/month)"
            + (", nothing while scaled to zero." if planned.scale_to_zero else "."),
        ]

    def as_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.value,
            "reasons": list(self.reasons),
            "chunk_size": self.chunk_size,
            "headroom": self.headroom,
            "planned_peak_tokens_per_second": self.workload.peak_tokens_per_second,
            "needed_tokens_per_second": self.needed_tokens_per_second,
            "planned_min_provisioned_throughput": self.plan.min_provisioned_throughput,
            "planned_max_provisioned_throughput": self.plan.max_provisioned_throughput,
            "deployed_min_provisioned_throughput": self.deployed.min_provisioned_throughput,
            "deployed_max_provisioned_throughput": self.deployed.max_provisioned_throughput,
            "nominal_verdict": self.nominal.verdict.value,
            "measured_concurrency": self.level.concurrency if self.level else None,
            "measured_tokens_per_second": self.measured_tokens_per_second,
            "deployed_cost": self.nominal.deployed_cost.as_dict()
            if self.nominal.deployed_cost
            else None,
            "planned_cost": self.plan.cost.as_dict() if self.plan.cost else None,
            "measured_tokens_per_request": self.measured_tokens_per_request,
            "delivered_share_of_max": self.delivered_share_of_max,
            "lower_bound": self.lower_bound,
            "level": asdict(self.level) if self.level else None,
        }


def _tokens_per_request(result: LoadTestResult, concurrency: int) -> float | None:
    counted = [
        s.total_tokens
        for s in result.samples
        if s.ok and s.concurrency == concurrency and s.total_tokens is not None
    ]
    return sum(counted) / len(counted) if counted else None


def check_capacity(
    workload: Workload,
    deployed: DeployedThroughput,
    chunk_size: int,
    result: LoadTestResult,
    *,
    p95_latency_target_s: float | None = None,
    headroom: float = DEFAULT_HEADROOM,
    pricing: Pricing | None = None,
) -> CapacityCheck:
    """Compare the workload the planner sized for, the deployed min/max and a load test.

    ``p95_latency_target_s`` defaults to the workload's. See the module docstring for the
    verdict's rules. With ``pricing`` the check also states the cost per hour and per month
    as deployed and as planned (:mod:`ptdeploy.capacity.cost`).
    """
    if not isinstance(deployed, DeployedThroughput):
        raise ThroughputError(
            f"deployed: got {type(deployed).__name__}; expected a DeployedThroughput "
            "(ptdeploy.capacity.capacity_check.deployed_throughput(endpoint))."
        )
    target = p95_latency_target_s
    if target is None:
        target = workload.p95_latency_target_s
    plan = plan_capacity(workload, chunk_size, headroom=headroom, pricing=pricing)
    nominal = assess_provisioning(
        deployed.min_provisioned_throughput,
        deployed.max_provisioned_throughput,
        workload.peak_tokens_per_second,
        chunk_size,
        headroom=headroom,
        pricing=pricing,
    )
    if not isinstance(result, LoadTestResult):
        raise ThroughputError(
            f"result: got {type(result).__name__}; expected the LoadTestResult of "
            "ptdeploy.capacity.loadtest.run_load_test."
        )
    levels = sorted(result.levels, key=lambda lv: lv.concurrency)
    best = result.best_level(target)
    measured = best.total_tokens_per_second if best is not None else None
    per_request = _tokens_per_request(result, best.concurrency) if best is not None else None
    lower_bound = best is not None and bool(levels) and best.concurrency == levels[-1].concurrency
    needed = workload.peak_tokens_per_second * nominal.headroom

    reasons: list[str] = []
    under = False
    if best is None:
        under = True
        reasons.append(
            "no concurrency level met the p95 latency target"
            if target is not None
            else "no request succeeded"
        )
    elif measured is not None and measured < needed:
        under = True
        reasons.append(
            f"the endpoint delivered {_fmt(measured)} tokens/s, less than the "
            f"{_fmt(needed)} tokens/s the planned peak needs with headroom"
        )
    if nominal.verdict is Verdict.UNDER:
        under = True
        reasons.append(
            f"the deployed max ({deployed.max_provisioned_throughput} tokens/s) is below the "
            f"{nominal.recommended_max_provisioned_throughput} tokens/s the planner needs for "
            "the peak"
        )
    if under:
        verdict = Verdict.UNDER
    else:
        verdict = nominal.verdict
        if verdict is Verdict.OVER:
            reasons.append(
                f"{nominal.recommended_max_provisioned_throughput} tokens/s would cover the "
                f"planned peak with headroom; the max is "
                f"{deployed.max_provisioned_throughput}"
            )
        else:
            reasons.append(
                "the max is the smallest whole number of chunks that covers the planned peak "
                "with headroom"
            )
        if measured is not None:
            reasons.append(
                f"the load test confirms it: {_fmt(measured)} tokens/s measured >= "
                f"{_fmt(needed)} needed"
            )
    if deployed.min_provisioned_throughput > plan.min_provisioned_throughput and not under:
        reasons.append(
            f"the min ({deployed.min_provisioned_throughput} tokens/s, billed even when idle) "
            f"is above the planner's {plan.min_provisioned_throughput} for the load at rest"
        )
    return CapacityCheck(
        verdict=verdict,
        reasons=tuple(reasons),
        workload=workload,
        deployed=deployed,
        chunk_size=plan.chunk_size,
        headroom=nominal.headroom,
        plan=plan,
        nominal=nominal,
        needed_tokens_per_second=needed,
        level=best,
        measured_tokens_per_second=measured,
        measured_tokens_per_request=per_request,
        lower_bound=lower_bound,
        p95_latency_target_s=target,
    )
