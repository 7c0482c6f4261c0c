"""Capacity planning for provisioned-throughput endpoints: workload -> min/max tokens/s.

Pure functions, no I/O. Two directions:

* :func:`plan_capacity` turns a workload (requests/s at peak and at rest, mean input and
  output tokens per request, optional p95 latency target) and the model's
  ``throughput_chunk_size`` (from ``get-model-optimization-info``) into
  ``min_provisioned_throughput`` / ``max_provisioned_throughput`` in whole chunks, a
  ``scale_to_zero_enabled`` suggestion and warnings. The result is a
  :class:`CapacityPlan` dataclass that also explains its arithmetic
  (:meth:`CapacityPlan.explain` returns text lines) and gives the served-entity fields
  (:meth:`CapacityPlan.served_entity_fields`) or a validated
  ``ptdeploy.serving.throughput.ThroughputPlan`` (:meth:`CapacityPlan.throughput_plan`).
* :func:`assess_provisioning` goes the other way: given a deployed min/max and a measured
  tokens/s (for instance the total tokens/s of a load-test level, see
  ``ptdeploy.capacity.loadtest``), say whether the endpoint is over-provisioned, under-provisioned
  or right-sized, with the ratio and an explanation (:class:`ProvisioningAssessment`).

How tokens are counted
    Databricks sizes provisioned throughput in tokens per second *of input and output
    tokens together* ("What do tokens per second ranges in provisioned throughput mean?":
    the ranges shown combine input and output token throughput, benchmarked on a
    2048-input / 256-output workload). So one request costs ``mean_input_tokens +
    mean_output_tokens`` tokens here; for embeddings, pass ``mean_output_tokens=0``.
    Output tokens are more expensive to produce than input tokens, so a workload much
    more output-heavy than the benchmark gets fewer real tokens/s per chunk than the
    nominal chunk size: confirm a plan with a load test (``ptdeploy loadtest``).

Why a headroom factor (default 1.2)
    Provisioned-throughput endpoints autoscale, but adding capacity takes minutes, not
    seconds, and bursts arrive faster than that; a plan sized exactly to the mean rate
    queues requests (higher latency) at every burst. Databricks recommends load-testing
    and provisioning for the load you must sustain; the 20 % margin is our default
    cushion for bursts and for the token-mix error above. Pass ``headroom=1.0`` to size
    exactly.

Scale to zero
    Suggested only when the load at rest is zero and there is no latency target: an
    endpoint that scaled to zero serves its next request only after a cold start
    (minutes for an LLM), which breaks any p95 target, and with traffic at rest it never
    idles long enough to save anything. Scale to zero always comes with min = 0 (the
    deployment validation in ``ptdeploy.serving.throughput`` requires it); forcing it on a busy
    workload warns.

Example::

    from ptdeploy.capacity.planner import Workload, plan_capacity

    plan = plan_capacity(
        Workload(peak_requests_per_second=5, rest_requests_per_second=3,
                 mean_input_tokens=300, mean_output_tokens=100),
        chunk_size=980,
    )
    print("\\n".join(plan.explain()))
    plan.served_entity_fields()
    # {'min_provisioned_throughput': 1960, 'max_provisioned_throughput': 2940,
    #  'scale_to_zero_enabled': False}
"""

from __future__ import annotations

import enum
import math
import numbers
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ptdeploy.capacity.cost import CostEstimate, Pricing, estimate_cost
from ptdeploy.errors import ParameterError, ThroughputError

if TYPE_CHECKING:
    from ptdeploy.serving.throughput import ThroughputPlan

DEFAULT_HEADROOM = 1.2

__all__ = [
    "DEFAULT_HEADROOM",
    "ProvisioningAssessment",
    "CapacityPlan",
    "Verdict",
    "Workload",
    "assess_provisioning",
    "chunks_needed",
    "plan_capacity",
]


# --------------------------------------------------------------------------- validation


def _real(
    field_name: str,
    value: Any,
    *,
    minimum: float = 0.0,
    strict: bool = False,
    error: type[ValueError] = ParameterError,
) -> float:
    """``value`` as a finite float >= minimum (> minimum when ``strict``), else a clear error.

    bool is refused on purpose (``True`` is an int in Python but never a rate), and so are
    strings: typed notebook parameters arrive here already converted.
    """
    bound = f"> {_fmt(minimum)}" if strict else f">= {_fmt(minimum)}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise error(
            f"{field_name}: got {value!r} ({type(value).__name__}); expected a number {bound}."
        )
    number = float(value)
    if not math.isfinite(number):
        raise error(f"{field_name}: got {value!r}; expected a finite number {bound}.")
    if number < minimum or (strict and number == minimum):
        raise error(f"{field_name}: got {_fmt(number)}; expected a number {bound}.")
    return number


def _chunk_size(value: Any) -> int:
    """The chunk size as a positive int; ``throughput_chunk_size`` is an integer tokens/s."""
    number = _real("chunk_size", value, strict=True, error=ThroughputError)
    if number != int(number):
        raise ThroughputError(
            f"chunk_size: got {_fmt(number)}; expected a positive whole number of tokens/s "
            "(the throughput_chunk_size returned by get-model-optimization-info)."
        )
    return int(number)


def _headroom(value: Any) -> float:
    return _real("headroom", value, minimum=1.0)


def _fmt(x: float) -> str:
    """A number for humans: integers without decimals, others with at most 2 decimals."""
    if float(x).is_integer():
        return f"{int(x)}"
    return f"{x:.2f}".rstrip("0").rstrip(".")


def chunks_needed(tokens_per_second: float, chunk_size: int) -> int:
    """Whole chunks that cover ``tokens_per_second`` (rounded up).

    Rounded to 9 decimals before the ceiling so float noise (``1000 * 1.2`` is
    ``1200.0000000000002``) does not buy an extra chunk.
    """
    return math.ceil(round(tokens_per_second / chunk_size, 9))


# --------------------------------------------------------------------------- workload


@dataclass(frozen=True)
class Workload:
    """The traffic an endpoint must serve. Rates in requests/s, sizes in mean tokens.

    ``rest_requests_per_second`` is the load outside peak hours (0 for an endpoint idle
    at night); it sets the minimum. ``p95_latency_target_s`` is optional; when set, the
    plan never suggests scale-to-zero (cold starts would break it).
    """

    peak_requests_per_second: float
    rest_requests_per_second: float
    mean_input_tokens: float
    mean_output_tokens: float
    p95_latency_target_s: float | None = None

    def __post_init__(self) -> None:
        peak = _real("peak_requests_per_second", self.peak_requests_per_second, strict=True)
        rest = _real("rest_requests_per_second", self.rest_requests_per_second)
        _real("mean_input_tokens", self.mean_input_tokens)
        _real("mean_output_tokens", self.mean_output_tokens)
        if rest > peak:
            raise ParameterError(
                f"rest_requests_per_second: got {_fmt(rest)}, more than "
                f"peak_requests_per_second={_fmt(peak)}; expected a rate between 0 and the "
                "peak rate (the load at rest cannot exceed the peak)."
            )
        if self.tokens_per_request <= 0:
            raise ParameterError(
                "mean_input_tokens + mean_output_tokens: got 0; expected at least one token "
                "per request (input tokens for embeddings, input and output for LLMs)."
            )
        if self.p95_latency_target_s is not None:
            _real("p95_latency_target_s", self.p95_latency_target_s, strict=True)

    @property
    def tokens_per_request(self) -> float:
        """Input plus output tokens: Databricks counts both in provisioned tokens/s."""
        return float(self.mean_input_tokens) + float(self.mean_output_tokens)

    @property
    def peak_tokens_per_second(self) -> float:
        return float(self.peak_requests_per_second) * self.tokens_per_request

    @property
    def rest_tokens_per_second(self) -> float:
        return float(self.rest_requests_per_second) * self.tokens_per_request


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class CapacityPlan:
    """A proposed min/max provisioned throughput and the arithmetic behind it."""

    workload: Workload
    chunk_size: int
    headroom: float
    tokens_per_request: float
    rest_tokens_per_second: float
    peak_tokens_per_second: float
    rest_target_tokens_per_second: float
    peak_target_tokens_per_second: float
    min_chunks: int
    max_chunks: int
    min_provisioned_throughput: int
    max_provisioned_throughput: int
    scale_to_zero_enabled: bool
    warnings: tuple[str, ...] = field(default_factory=tuple)
    cost: CostEstimate | None = None  # with a Pricing: per hour/month at min and max

    def served_entity_fields(self) -> dict[str, Any]:
        """The fields of a served entity in an endpoint config (create or update)."""
        return {
            "min_provisioned_throughput": self.min_provisioned_throughput,
            "max_provisioned_throughput": self.max_provisioned_throughput,
            "scale_to_zero_enabled": self.scale_to_zero_enabled,
        }

    def throughput_plan(self) -> ThroughputPlan:
        """The same values as a validated :class:`ptdeploy.serving.throughput.ThroughputPlan`,
        the object the endpoint-deployment code takes."""
        from ptdeploy.serving.throughput import ThroughputPlan

        return ThroughputPlan(
            min_provisioned_throughput=self.min_provisioned_throughput,
            max_provisioned_throughput=self.max_provisioned_throughput,
            chunk_size=self.chunk_size,
            scale_to_zero_enabled=self.scale_to_zero_enabled,
        )

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["warnings"] = list(self.warnings)
        return data

    def explain(self) -> list[str]:
        """The arithmetic, one step a line, then the proposal and any warning."""
        w = self.workload
        lines = [
            f"Workload: {_fmt(w.peak_requests_per_second)} req/s at peak, "
            f"{_fmt(w.rest_requests_per_second)} req/s at rest; "
            f"{_fmt(w.mean_input_tokens)} input + {_fmt(w.mean_output_tokens)} output = "
            f"{_fmt(self.tokens_per_request)} tokens per request "
            "(provisioned tokens/s count input and output tokens together).",
            f"Chunk size: {self.chunk_size} tokens/s (throughput_chunk_size); "
            f"headroom x{_fmt(self.headroom)} for bursts and slow autoscaling.",
            _step(
                "At rest",
                w.rest_requests_per_second,
                self,
                self.rest_tokens_per_second,
                self.rest_target_tokens_per_second,
                self.min_chunks,
            ),
            _step(
                "At peak",
                w.peak_requests_per_second,
                self,
                self.peak_tokens_per_second,
                self.peak_target_tokens_per_second,
                self.max_chunks,
            ),
            f"Proposal: min_provisioned_throughput={self.min_provisioned_throughput} "
            f"({self.min_chunks} x {self.chunk_size}), "
            f"max_provisioned_throughput={self.max_provisioned_throughput} "
            f"({self.max_chunks} x {self.chunk_size}), "
            f"scale_to_zero_enabled={self.scale_to_zero_enabled}.",
        ]
        if w.p95_latency_target_s is not None:
            lines.append(
                f"p95 latency target {_fmt(w.p95_latency_target_s)} s: token arithmetic cannot "
                "promise a latency; check it with a load test at the expected concurrency."
            )
        if self.cost is not None:
            lines.extend(self.cost.explain())
        lines.extend(f"Warning: {text}" for text in self.warnings)
        return lines


def _step(
    label: str, rps: float, plan: CapacityPlan, tps: float, target: float, chunks: int
) -> str:
    raw = chunks_needed(target, plan.chunk_size)
    adjusted = ""
    if raw != chunks:
        why = "scale to zero needs min 0" if chunks == 0 else "at least 1 chunk"
        adjusted = f", set to {chunks} ({why})"
    return (
        f"{label}: {_fmt(rps)} req/s x {_fmt(plan.tokens_per_request)} tokens = {_fmt(tps)} "
        f"tokens/s; x{_fmt(plan.headroom)} = {_fmt(target)} tokens/s; "
        f"ceil({_fmt(target)} / {plan.chunk_size}) = {raw} chunk(s){adjusted} = "
        f"{chunks * plan.chunk_size} tokens/s."
    )


def plan_capacity(
    workload: Workload,
    chunk_size: int,
    *,
    headroom: float = DEFAULT_HEADROOM,
    scale_to_zero: bool | None = None,
    pricing: Pricing | None = None,
) -> CapacityPlan:
    """Propose min/max provisioned throughput for ``workload`` in whole chunks.

    min covers the load at rest and max the peak, each times ``headroom`` and rounded up
    to whole chunks; max is at least one chunk (Databricks requires max > 0).
    ``scale_to_zero=None`` lets the planner decide (on only when the rest load is 0 and
    there is no latency target); ``True``/``False`` force it, with a warning when the
    choice conflicts with the workload. Scale to zero sets min to 0. Without
    scale-to-zero and no load at rest (a latency target, or ``scale_to_zero=False``), one
    chunk stays warm (min = 1 chunk) so the first request after a quiet period does not
    wait for a cold start. With ``pricing`` (:class:`ptdeploy.capacity.cost.Pricing`) the plan
    carries its cost per hour and per month at min and at max (``plan.cost``).

    Raises :class:`~ptdeploy.errors.ParameterError` for an invalid workload or headroom
    and :class:`~ptdeploy.errors.ThroughputError` for an invalid chunk size.
    """
    if not isinstance(workload, Workload):
        raise ParameterError(
            f"workload: got {type(workload).__name__}; expected a ptdeploy.capacity.planner.Workload."
        )
    chunk = _chunk_size(chunk_size)
    margin = _headroom(headroom)
    if scale_to_zero is not None and not isinstance(scale_to_zero, bool):
        raise ParameterError(
            f"scale_to_zero: got {scale_to_zero!r}; expected True, False or None (let the "
            "planner decide)."
        )

    rest_tps = workload.rest_tokens_per_second
    peak_tps = workload.peak_tokens_per_second
    rest_target = rest_tps * margin
    peak_target = peak_tps * margin
    min_chunks = chunks_needed(rest_target, chunk)
    max_chunks = max(1, chunks_needed(peak_target, chunk))
    has_target = workload.p95_latency_target_s is not None
    idle_at_rest = workload.rest_requests_per_second == 0

    warnings: list[str] = []
    scale = (idle_at_rest and not has_target) if scale_to_zero is None else scale_to_zero
    if scale:
        if has_target:
            warnings.append(
                f"scale_to_zero_enabled=True conflicts with the p95 latency target of "
                f"{_fmt(workload.p95_latency_target_s)} s: after scaling to zero the next "
                "request waits for a cold start (minutes for an LLM endpoint)."
            )
        if min_chunks > 0:
            warnings.append(
                f"scale_to_zero_enabled=True with {_fmt(workload.rest_requests_per_second)} "
                f"req/s at rest: scale to zero needs min_provisioned_throughput=0, so the "
                f"{min_chunks} chunk(s) the rest load needs come only from autoscaling; the "
                "endpoint is rarely idle, so scaling to zero saves little and every quiet "
                "gap risks a cold start."
            )
        min_chunks = 0
    elif min_chunks == 0:
        # Without scale-to-zero the endpoint keeps capacity anyway; say how much.
        min_chunks = 1
        reason = (
            "a p95 latency target is set"
            if has_target
            else "scale_to_zero_enabled=False was asked for"
        )
        warnings.append(
            f"no load at rest but {reason}: min is kept at 1 chunk (always warm) instead "
            "of scaling to zero, which would add a cold start after quiet periods."
        )

    return CapacityPlan(
        workload=workload,
        chunk_size=chunk,
        headroom=margin,
        tokens_per_request=workload.tokens_per_request,
        rest_tokens_per_second=rest_tps,
        peak_tokens_per_second=peak_tps,
        rest_target_tokens_per_second=rest_target,
        peak_target_tokens_per_second=peak_target,
        min_chunks=min_chunks,
        max_chunks=max_chunks,
        min_provisioned_throughput=min_chunks * chunk,
        max_provisioned_throughput=max_chunks * chunk,
        scale_to_zero_enabled=scale,
        warnings=tuple(warnings),
        cost=_cost(min_chunks, max_chunks, pricing, scale),
    )


def _cost(
    min_units: int, max_units: int, pricing: Pricing | None, scale_to_zero: bool
) -> CostEstimate | None:
    if pricing is None:
        return None
    return estimate_cost(min_units, max_units, pricing, scale_to_zero=scale_to_zero)


# --------------------------------------------------------------------------- assessment


class Verdict(enum.StrEnum):
    UNDER = "under-provisioned"
    OVER = "over-provisioned"
    RIGHT = "right-sized"


@dataclass(frozen=True)
class ProvisioningAssessment:
    """How a deployed min/max compares with a measured tokens/s.

    ``ratio`` is measured / max_provisioned_throughput: the share of the maximum the
    measured load uses (above ``1 / headroom`` there is less margin than planned).
    ``recommended_max_provisioned_throughput`` is what :func:`plan_capacity` would pick
    for that load.
    """

    verdict: Verdict
    ratio: float
    measured_tokens_per_second: float
    required_tokens_per_second: float
    min_provisioned_throughput: int
    max_provisioned_throughput: int
    chunk_size: int
    headroom: float
    recommended_max_provisioned_throughput: int
    deployed_cost: CostEstimate | None = None  # the deployed min/max, with a Pricing
    recommended_cost: CostEstimate | None = None  # the deployed min, the recommended max

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["verdict"] = self.verdict.value
        return data

    def explain(self) -> list[str]:
        deployed_max = self.max_provisioned_throughput // self.chunk_size
        needed = self.recommended_max_provisioned_throughput // self.chunk_size
        lines = [
            f"Deployed: min {self.min_provisioned_throughput} / max "
            f"{self.max_provisioned_throughput} tokens/s ({deployed_max} chunk(s) of "
            f"{self.chunk_size}).",
            f"Measured: {_fmt(self.measured_tokens_per_second)} tokens/s = "
            f"{self.ratio:.0%} of the max; x{_fmt(self.headroom)} headroom = "
            f"{_fmt(self.required_tokens_per_second)} tokens/s -> {needed} chunk(s) = "
            f"{self.recommended_max_provisioned_throughput} tokens/s.",
        ]
        if self.verdict is Verdict.UNDER:
            lines.append(
                f"Verdict: {self.verdict}: the load needs {needed} chunk(s) with headroom but "
                f"the max allows {deployed_max}; raise max_provisioned_throughput to "
                f"{self.recommended_max_provisioned_throughput} or expect queueing (higher "
                "latency) at peak."
            )
        elif self.verdict is Verdict.OVER:
            lines.append(
                f"Verdict: {self.verdict}: {needed} chunk(s) cover the load with headroom, "
                f"the max allows {deployed_max}; max_provisioned_throughput could be "
                f"{self.recommended_max_provisioned_throughput}."
            )
        else:
            lines.append(
                f"Verdict: {self.verdict}: the max is the smallest whole number of chunks "
                "that covers the load with headroom."
            )
        if self.min_provisioned_throughput > self.recommended_max_provisioned_throughput:
            lines.append(
                f"The minimum alone ({self.min_provisioned_throughput} tokens/s, billed even "
                "when idle) exceeds what the measured load needs."
            )
        if self.deployed_cost is not None and self.recommended_cost is not None:
            deployed, recommended = self.deployed_cost, self.recommended_cost
            currency = deployed.pricing.currency
            lines.append(
                f"Cost at max: {deployed.per_hour_at_max:,.2f} {currency}/hour "
                f"({deployed.per_month_at_max:,.2f} {currency}/month) as deployed; "
                f"{recommended.per_hour_at_max:,.2f} {currency}/hour "
                f"({recommended.per_month_at_max:,.2f} {currency}/month) with the recommended "
                f"max. At min: {deployed.per_hour_at_min:,.2f} {currency}/hour."
            )
        return lines


def assess_provisioning(
    min_provisioned_throughput: int,
    max_provisioned_throughput: int,
    measured_tokens_per_second: float,
    chunk_size: int,
    *,
    headroom: float = DEFAULT_HEADROOM,
    pricing: Pricing | None = None,
) -> ProvisioningAssessment:
    """Compare a deployed min/max with ``measured_tokens_per_second``.

    Pass the tokens/s (input + output) the endpoint must sustain at peak: for instance
    the ``total_tokens_per_second`` of the load-test level that matches production
    concurrency, or the peak of usage tracking. Under-provisioned: the load times
    ``headroom`` needs more chunks than the max allows. Over-provisioned: fewer chunks
    would do. Right-sized: the max is exactly the chunks needed. With ``pricing`` the
    assessment also carries the cost as deployed and with the recommended max.
    """
    chunk = _chunk_size(chunk_size)
    margin = _headroom(headroom)
    low = _real("min_provisioned_throughput", min_provisioned_throughput, error=ThroughputError)
    high = _real(
        "max_provisioned_throughput", max_provisioned_throughput, strict=True, error=ThroughputError
    )
    measured = _real("measured_tokens_per_second", measured_tokens_per_second)
    for name, value in (("min_provisioned_throughput", low), ("max_provisioned_throughput", high)):
        if value % chunk:
            raise ThroughputError(
                f"{name}: got {_fmt(value)}; expected a multiple of the chunk size {chunk} "
                f"(e.g. {max(1, round(value / chunk)) * chunk})."
            )
    if low > high:
        raise ThroughputError(
            f"min_provisioned_throughput: got {_fmt(low)}, more than "
            f"max_provisioned_throughput={_fmt(high)}; expected min <= max."
        )

    required = measured * margin
    needed = max(1, chunks_needed(required, chunk))
    deployed = int(high) // chunk
    if needed > deployed:
        verdict = Verdict.UNDER
    elif needed < deployed:
        verdict = Verdict.OVER
    else:
        verdict = Verdict.RIGHT
    return ProvisioningAssessment(
        verdict=verdict,
        ratio=measured / high,
        measured_tokens_per_second=measured,
        required_tokens_per_second=required,
        min_provisioned_throughput=int(low),
        max_provisioned_throughput=int(high),
        chunk_size=chunk,
        headroom=margin,
        recommended_max_provisioned_throughput=needed * chunk,
        deployed_cost=_cost(int(low) // chunk, deployed, pricing, low == 0),
        recommended_cost=_cost(min(int(low) // chunk, needed), needed, pricing, low == 0),
    )
