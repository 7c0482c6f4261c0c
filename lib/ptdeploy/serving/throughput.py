"""How much provisioned capacity a served entity gets, validated before any API call.

Two sizings exist, chosen by ``get-model-optimization-info`` (see ``ptdeploy.serving.optimization``):

- tokens per second (``throughput_chunk_size``): ``min_provisioned_throughput`` and
  ``max_provisioned_throughput``, both multiples of the chunk size, ``0 <= min <= max``,
  ``max > 0``; ``scale_to_zero_enabled`` only when ``min == 0``;
- model units (``model_unit_chunk_size``): a fixed ``provisioned_model_units``, a positive
  multiple of the chunk size; no scale to zero.

The serving API refuses a value that is not a multiple of the chunk with a 400 after a
round trip; here the refusal is immediate and names the nearest valid values. Users think
in chunks ("2 to 3 chunks") or in tokens per second ("about 2500 tokens/s"): the
constructors take either and round *up* to whole chunks, so nobody computes multiples by
hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from ptdeploy.errors import NotOptimizableError, ThroughputError

if TYPE_CHECKING:
    from ptdeploy.serving.optimization import OptimizationInfo


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_chunk_size(chunk_size: Any, what: str = "chunk_size") -> int:
    if not _is_int(chunk_size) or chunk_size <= 0:
        raise ThroughputError(
            f"{what}={chunk_size!r} is not valid: it must be a positive integer, as answered "
            "by get-model-optimization-info (throughput_chunk_size or model_unit_chunk_size)."
        )
    return chunk_size


def _check_chunks(name: str, value: Any, *, minimum: int) -> int:
    if not _is_int(value) or value < minimum:
        raise ThroughputError(
            f"{name}={value!r} is not valid: it must be an integer >= {minimum} "
            "(a number of chunks)."
        )
    return value


def _suggest(value: int, chunk: int, *, allow_zero: bool) -> str:
    lower = value // chunk * chunk
    upper = lower + chunk
    candidates = [v for v in (lower, upper) if v > 0 or allow_zero]
    return " or ".join(str(v) for v in candidates)


def _check_multiple(field: str, value: Any, chunk: int, unit: str, *, allow_zero: bool) -> None:
    valid = f"{'0, ' if allow_zero else ''}{chunk}, {2 * chunk}, {3 * chunk}, ..."
    if not _is_int(value):
        raise ThroughputError(
            f"{field}={value!r} is not valid: it must be an integer number of {unit}, a "
            f"multiple of the chunk size {chunk} ({valid})."
        )
    if value < 0 or (value == 0 and not allow_zero):
        raise ThroughputError(
            f"{field}={value} is not valid: it must be {'>= 0' if allow_zero else '> 0'}; "
            f"valid values are multiples of the chunk size {chunk}: {valid}"
        )
    if value % chunk:
        raise ThroughputError(
            f"{field}={value} is not a multiple of the chunk size {chunk} {unit}; nearest "
            f"valid values: {_suggest(value, chunk, allow_zero=allow_zero)} (valid: {valid})."
        )


def _chunks_up(field: str, value: Any, chunk: int) -> int:
    """Whole chunks needed to provide ``value`` tokens/s, rounded up (exactly, no float error)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ThroughputError(f"{field}={value!r} is not valid: it must be a number of tokens/s.")
    if value < 0:
        raise ThroughputError(f"{field}={value!r} is not valid: it must be >= 0 tokens/s.")
    return math.ceil(Fraction(value) / chunk)


@dataclass(frozen=True)
class ThroughputPlan:
    """Provisioned throughput in tokens per second (the ``throughput_chunk_size`` path)."""

    min_provisioned_throughput: int
    max_provisioned_throughput: int
    chunk_size: int
    scale_to_zero_enabled: bool = False

    def __post_init__(self) -> None:
        chunk = _check_chunk_size(self.chunk_size)
        _check_multiple(
            "min_provisioned_throughput",
            self.min_provisioned_throughput,
            chunk,
            "tokens/s",
            allow_zero=True,
        )
        _check_multiple(
            "max_provisioned_throughput",
            self.max_provisioned_throughput,
            chunk,
            "tokens/s",
            allow_zero=False,
        )
        if self.min_provisioned_throughput > self.max_provisioned_throughput:
            raise ThroughputError(
                f"min_provisioned_throughput={self.min_provisioned_throughput} is greater than "
                f"max_provisioned_throughput={self.max_provisioned_throughput}: the minimum "
                "must be <= the maximum."
            )
        if not isinstance(self.scale_to_zero_enabled, bool):
            raise ThroughputError(
                f"scale_to_zero_enabled={self.scale_to_zero_enabled!r} is not valid: give "
                "True or False."
            )
        if self.scale_to_zero_enabled and self.min_provisioned_throughput != 0:
            raise ThroughputError(
                f"scale_to_zero_enabled=True needs min_provisioned_throughput=0 (got "
                f"{self.min_provisioned_throughput}): an endpoint can only scale to zero "
                "when its minimum throughput is zero. Set min to 0 or disable scale to zero."
            )

    @classmethod
    def from_chunks(
        cls, chunk_size: int, min_chunks: int, max_chunks: int, scale_to_zero: bool = False
    ) -> ThroughputPlan:
        """``min_chunks``..``max_chunks`` chunks of ``chunk_size`` tokens/s each."""
        chunk = _check_chunk_size(chunk_size)
        lo = _check_chunks("min_chunks", min_chunks, minimum=0)
        hi = _check_chunks("max_chunks", max_chunks, minimum=1)
        if lo > hi:
            raise ThroughputError(
                f"min_chunks={lo} is greater than max_chunks={hi}: the minimum must be <= "
                "the maximum."
            )
        return cls(lo * chunk, hi * chunk, chunk, scale_to_zero)

    @classmethod
    def from_tokens_per_second(
        cls,
        chunk_size: int,
        min_tps: float,
        max_tps: float,
        scale_to_zero: bool = False,
    ) -> ThroughputPlan:
        """At least ``min_tps``..``max_tps`` tokens/s, each rounded up to whole chunks."""
        chunk = _check_chunk_size(chunk_size)
        lo = _chunks_up("min_tps", min_tps, chunk)
        hi = _chunks_up("max_tps", max_tps, chunk)
        if max_tps <= 0:
            raise ThroughputError(
                f"max_tps={max_tps!r} is not valid: the maximum throughput must be > 0 "
                f"tokens/s (it is rounded up to a multiple of {chunk})."
            )
        if min_tps > max_tps:
            raise ThroughputError(
                f"min_tps={min_tps!r} is greater than max_tps={max_tps!r}: the minimum must "
                "be <= the maximum."
            )
        return cls(lo * chunk, hi * chunk, chunk, scale_to_zero)

    @property
    def min_chunks(self) -> int:
        return self.min_provisioned_throughput // self.chunk_size

    @property
    def max_chunks(self) -> int:
        return self.max_provisioned_throughput // self.chunk_size

    def served_entity_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``databricks.sdk.service.serving.ServedEntityInput``."""
        return {
            "min_provisioned_throughput": self.min_provisioned_throughput,
            "max_provisioned_throughput": self.max_provisioned_throughput,
            "scale_to_zero_enabled": self.scale_to_zero_enabled,
        }

    def describe(self) -> str:
        return (
            f"{self.min_provisioned_throughput}-{self.max_provisioned_throughput} tokens/s "
            f"({self.min_chunks}-{self.max_chunks} chunks of {self.chunk_size}), scale to zero "
            f"{'on' if self.scale_to_zero_enabled else 'off'}"
        )


@dataclass(frozen=True)
class ModelUnitsPlan:
    """A fixed number of model units (the ``model_unit_chunk_size`` path); no scale to zero."""

    provisioned_model_units: int
    chunk_size: int

    def __post_init__(self) -> None:
        chunk = _check_chunk_size(self.chunk_size, "model_unit_chunk_size")
        _check_multiple(
            "provisioned_model_units",
            self.provisioned_model_units,
            chunk,
            "model units",
            allow_zero=False,
        )

    @classmethod
    def from_chunks(cls, chunk_size: int, chunks: int) -> ModelUnitsPlan:
        chunk = _check_chunk_size(chunk_size, "model_unit_chunk_size")
        return cls(_check_chunks("chunks", chunks, minimum=1) * chunk, chunk)

    @property
    def chunks(self) -> int:
        return self.provisioned_model_units // self.chunk_size

    @property
    def scale_to_zero_enabled(self) -> bool:
        return False

    def served_entity_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``databricks.sdk.service.serving.ServedEntityInput``."""
        return {"provisioned_model_units": self.provisioned_model_units}

    def describe(self) -> str:
        return (
            f"{self.provisioned_model_units} model units ({self.chunks} chunks of "
            f"{self.chunk_size})"
        )


ProvisioningPlan = ThroughputPlan | ModelUnitsPlan


def plan_from_info(
    info: OptimizationInfo, min_chunks: int, max_chunks: int, scale_to_zero: bool = False
) -> ProvisioningPlan:
    """The plan a notebook's chunk parameters mean for this model.

    Tokens/s models get ``min_chunks``..``max_chunks`` chunks. Model-unit models are a
    fixed capacity: they get ``max_chunks`` chunks (``min_chunks`` is checked but has no
    effect), and refuse ``scale_to_zero`` rather than silently ignoring it.
    """
    from ptdeploy.serving.optimization import ProvisioningPath

    if not info.optimizable:
        raise NotOptimizableError(
            "this model is not optimizable for provisioned throughput (get-model-"
            "optimization-info answered optimizable=false); see "
            "ptdeploy.serving.optimization.require_optimizable for what to do."
        )
    if info.path is ProvisioningPath.MODEL_UNITS:
        lo = _check_chunks("min_chunks", min_chunks, minimum=0)
        hi = _check_chunks("max_chunks", max_chunks, minimum=1)
        if lo > hi:
            raise ThroughputError(
                f"min_chunks={lo} is greater than max_chunks={hi}: the minimum must be <= "
                "the maximum."
            )
        if scale_to_zero:
            raise ThroughputError(
                f"scale_to_zero=True is not available for this model ({info.model_type}): it "
                "is provisioned in model units (model_unit_chunk_size="
                f"{info.model_unit_chunk_size}), a fixed capacity that does not scale to "
                "zero. Set scale_to_zero to False."
            )
        assert info.model_unit_chunk_size is not None
        return ModelUnitsPlan.from_chunks(info.model_unit_chunk_size, hi)
    assert info.throughput_chunk_size is not None
    return ThroughputPlan.from_chunks(
        info.throughput_chunk_size, min_chunks, max_chunks, scale_to_zero
    )
