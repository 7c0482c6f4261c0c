"""Create, update, wait for and delete provisioned-throughput serving endpoints.

Everything goes through ``databricks-sdk`` (``w.serving_endpoints``), so the same code
runs against Databricks and against the local workspace. What the SDK does not do, and
this module does:

- ``create_or_update`` is safe to run twice: an existing endpoint is updated, never
  duplicated; an update already in progress is waited out first (Databricks refuses a
  second one); a concurrent creator winning the race (409 ``RESOURCE_ALREADY_EXISTS``)
  turns the create into an update; an endpoint already serving the requested config is
  left alone (a provisioned-throughput redeploy takes tens of minutes).
- ``wait_until_ready`` waits for ``state.ready == READY`` **and**
  ``state.config_update == NOT_UPDATING``. The SDK's ``*_and_wait`` helpers only check
  the second, which is already true while a freshly created endpoint can still be
  NOT_READY. It shows progress, fails fast with the endpoint's own deployment message on
  ``UPDATE_FAILED``/``UPDATE_CANCELED``, and on timeout says which state it was left in.
  The clock is injectable (``ptdeploy.clock.Clock``; a fake in tests) so tests never sleep.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from databricks.sdk.errors import (
    AlreadyExists,
    BadRequest,
    InvalidState,
    NotFound,
    ResourceAlreadyExists,
    ResourceConflict,
)
from databricks.sdk.service.serving import (
    AiGatewayInferenceTableConfig,
    AiGatewayRateLimit,
    AiGatewayRateLimitKey,
    AiGatewayRateLimitRenewalPeriod,
    AiGatewayUsageTrackingConfig,
    EndpointCoreConfigInput,
    EndpointStateConfigUpdate,
    EndpointStateReady,
    EndpointTag,
    Route,
    ServedEntityInput,
    ServedModelStateDeployment,
    ServingEndpointDetailed,
    TrafficConfig,
)

from ptdeploy.clock import Clock, RealClock
from ptdeploy.errors import (
    EndpointConfigError,
    EndpointError,
    EndpointNotFoundError,
    EndpointTimeoutError,
)
from ptdeploy.names import (
    check_endpoint_name,
    check_served_entity_name,
    default_served_entity_name,
)
from ptdeploy.progress import Progress, reporter
from ptdeploy.serving.throughput import ModelUnitsPlan, ProvisioningPlan, ThroughputPlan

if TYPE_CHECKING:
    from databricks.sdk import WorkspaceClient

__all__ = [
    "DEFAULT_TIMEOUT",
    "EndpointSpec",
    "GatewaySpec",
    "InferenceTable",
    "RateLimit",
    "ServedEntitySpec",
    "check_endpoint_name",
    "create_or_update",
    "delete_endpoint",
    "describe_state",
    "get_endpoint",
    "wait_until_ready",
]

DEFAULT_TIMEOUT = timedelta(minutes=40)  # a provisioned-throughput endpoint takes ~30 min
DEFAULT_POLL_INTERVAL = 10.0  # seconds between polls once the backoff has grown
# The first poll comes quickly (a local endpoint, or an update that was a no-op, is ready
# in well under a second); the delay then doubles up to the poll interval.
FIRST_POLL_DELAY = 0.25

_UC_PART = re.compile(r"[^.\s/\x00-\x1f\x7f]+")

_FAILED_UPDATES = (
    EndpointStateConfigUpdate.UPDATE_FAILED,
    EndpointStateConfigUpdate.UPDATE_CANCELED,
)
_FAILED_DEPLOYMENTS = (
    ServedModelStateDeployment.DEPLOYMENT_FAILED,
    ServedModelStateDeployment.DEPLOYMENT_ABORTED,
)


# ------------------------------------------------------------------------- gateway


@dataclass(frozen=True)
class InferenceTable:
    """AI Gateway inference table: requests and responses logged to Unity Catalog."""

    catalog_name: str
    schema_name: str
    table_name_prefix: str | None = None
    enabled: bool = True

    def __post_init__(self) -> None:
        for key in ("catalog_name", "schema_name", "table_name_prefix"):
            value = getattr(self, key)
            if value is None and key == "table_name_prefix":
                continue
            if not isinstance(value, str) or not _UC_PART.fullmatch(value):
                raise EndpointConfigError(
                    f"inference_table.{key}={value!r} is not valid: give one Unity Catalog "
                    "name level (no '.', spaces, '/' or control characters), e.g. 'main'."
                )

    def to_sdk(self) -> AiGatewayInferenceTableConfig:
        return AiGatewayInferenceTableConfig(
            catalog_name=self.catalog_name,
            schema_name=self.schema_name,
            table_name_prefix=self.table_name_prefix,
            enabled=self.enabled,
        )


_RATE_LIMIT_KEYS = tuple(k.value for k in AiGatewayRateLimitKey)


@dataclass(frozen=True)
class RateLimit:
    """An AI Gateway rate limit per minute, on calls and/or tokens.

    ``key`` is who the limit counts against: the whole ``endpoint`` (default), each
    ``user``, or one ``user_group``/``service_principal`` named by ``principal``.
    """

    calls: int | None = None
    tokens: int | None = None
    key: str = "endpoint"
    principal: str | None = None

    def __post_init__(self) -> None:
        if self.calls is None and self.tokens is None:
            raise EndpointConfigError(
                "rate limit has neither calls nor tokens: give calls=<per minute> and/or "
                "tokens=<per minute>."
            )
        for what in ("calls", "tokens"):
            value = getattr(self, what)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise EndpointConfigError(
                    f"rate limit {what}={value!r} is not valid: give a positive integer per minute."
                )
        if self.key not in _RATE_LIMIT_KEYS:
            raise EndpointConfigError(
                f"rate limit key={self.key!r} is not valid: one of {', '.join(_RATE_LIMIT_KEYS)}."
            )
        if self.key == "endpoint" and self.principal is not None:
            raise EndpointConfigError(
                f"rate limit principal={self.principal!r} needs key='user', 'user_group' or "
                "'service_principal' (key='endpoint' limits the whole endpoint)."
            )
        if self.key in ("user_group", "service_principal") and not self.principal:
            raise EndpointConfigError(
                f"rate limit key={self.key!r} needs principal=<group name or application id>."
            )

    def to_sdk(self) -> AiGatewayRateLimit:
        return AiGatewayRateLimit(
            renewal_period=AiGatewayRateLimitRenewalPeriod.MINUTE,
            calls=self.calls,
            tokens=self.tokens,
            key=AiGatewayRateLimitKey(self.key),
            principal=self.principal,
        )


@dataclass(frozen=True)
class GatewaySpec:
    """AI Gateway settings. Applied with a PUT: what is not given here is turned off."""

    usage_tracking: bool = False
    inference_table: InferenceTable | None = None
    rate_limits: tuple[RateLimit, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "rate_limits", tuple(self.rate_limits))
        for i, limit in enumerate(self.rate_limits):
            if not isinstance(limit, RateLimit):
                raise EndpointConfigError(
                    f"ai_gateway.rate_limits[{i}]={limit!r} is not a ptdeploy.serving.endpoints.RateLimit."
                )

    def put_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``w.serving_endpoints.put_ai_gateway``."""
        kwargs: dict[str, Any] = {
            "usage_tracking_config": AiGatewayUsageTrackingConfig(enabled=self.usage_tracking),
            "rate_limits": [limit.to_sdk() for limit in self.rate_limits],
        }
        if self.inference_table is not None:
            kwargs["inference_table_config"] = self.inference_table.to_sdk()
        return kwargs


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class ServedEntitySpec:
    """One registered model version served by the endpoint, with its capacity."""

    entity_name: str
    entity_version: str | int
    plan: ProvisioningPlan
    name: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.entity_name, str) or not self.entity_name.strip():
            raise EndpointConfigError(
                f"entity_name={self.entity_name!r} is empty: give the registered model name, "
                "e.g. 'main.default.llama_completions'."
            )
        version = str(self.entity_version).strip()
        if isinstance(self.entity_version, bool) or not version.isdigit() or int(version) < 1:
            raise EndpointConfigError(
                f"entity_version={self.entity_version!r} for {self.entity_name} is not valid: "
                "give a positive model version number, e.g. 1."
            )
        object.__setattr__(self, "entity_version", str(int(version)))
        if not isinstance(self.plan, ThroughputPlan | ModelUnitsPlan):
            raise EndpointConfigError(
                f"plan={self.plan!r} for {self.entity_name} is not a ThroughputPlan or "
                "ModelUnitsPlan (see ptdeploy.serving.throughput.plan_from_info)."
            )
        if self.name is None:
            object.__setattr__(
                self,
                "name",
                default_served_entity_name(self.entity_name, str(self.entity_version)),
            )
        check_served_entity_name(self.name)

    def to_sdk(self) -> ServedEntityInput:
        return ServedEntityInput(
            name=self.name,
            entity_name=self.entity_name,
            entity_version=str(self.entity_version),
            **self.plan.served_entity_kwargs(),
        )

    def _signature(self) -> tuple[Any, ...]:
        kw = self.plan.served_entity_kwargs()
        return (
            self.name,
            self.entity_name,
            str(self.entity_version),
            kw.get("min_provisioned_throughput"),
            kw.get("max_provisioned_throughput"),
            kw.get("provisioned_model_units"),
            bool(kw.get("scale_to_zero_enabled", False)),
        )


@dataclass(frozen=True)
class EndpointSpec:
    """Everything ``create_or_update`` needs to bring an endpoint to the desired state.

    The primary served entity is ``entity_name``/``entity_version`` with ``plan``;
    ``additional_entities`` serve other versions behind the same endpoint (A/B tests,
    canaries), with ``traffic`` mapping served entity names to percentages summing to
    100. ``tags`` are added or overwritten, never removed (others may have added billing
    tags). ``ai_gateway`` is applied as a whole when given.
    """

    name: str
    entity_name: str
    entity_version: str | int
    plan: ProvisioningPlan
    served_entity_name: str | None = None
    additional_entities: tuple[ServedEntitySpec, ...] = ()
    traffic: Mapping[str, int] | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    ai_gateway: GatewaySpec | None = None

    def __post_init__(self) -> None:
        check_endpoint_name(self.name)
        primary = ServedEntitySpec(
            self.entity_name, self.entity_version, self.plan, self.served_entity_name
        )
        object.__setattr__(self, "entity_version", primary.entity_version)
        object.__setattr__(self, "served_entity_name", primary.name)
        object.__setattr__(self, "additional_entities", tuple(self.additional_entities))
        for i, extra in enumerate(self.additional_entities):
            if not isinstance(extra, ServedEntitySpec):
                raise EndpointConfigError(
                    f"additional_entities[{i}]={extra!r} is not a ServedEntitySpec."
                )
        names = [e.name for e in self.entities]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise EndpointConfigError(
                f"served entity names {duplicates} appear more than once in endpoint "
                f"{self.name!r}: each served entity needs its own name (pass name=...)."
            )
        self._check_traffic(names)
        self._check_tags()
        if self.ai_gateway is not None and not isinstance(self.ai_gateway, GatewaySpec):
            raise EndpointConfigError(
                f"ai_gateway={self.ai_gateway!r} is not a ptdeploy.serving.endpoints.GatewaySpec."
            )

    def _check_traffic(self, names: list[str]) -> None:
        if self.traffic is None:
            if len(names) > 1:
                raise EndpointConfigError(
                    f"endpoint {self.name!r} serves {len(names)} entities ({', '.join(names)}): "
                    "give traffic={served entity name: percent, ...} summing to 100."
                )
            return
        traffic = dict(self.traffic)
        unknown = sorted(set(traffic) - set(names))
        if unknown:
            raise EndpointConfigError(
                f"traffic routes to {unknown}, which endpoint {self.name!r} does not serve; "
                f"served entity names: {', '.join(names)}."
            )
        for key, pct in traffic.items():
            if isinstance(pct, bool) or not isinstance(pct, int) or not 0 <= pct <= 100:
                raise EndpointConfigError(
                    f"traffic[{key!r}]={pct!r} is not valid: give an integer percentage 0..100."
                )
        if sum(traffic.values()) != 100:
            raise EndpointConfigError(
                f"traffic={traffic} sums to {sum(traffic.values())}%: the percentages must sum "
                "to 100."
            )
        object.__setattr__(self, "traffic", traffic)

    def _check_tags(self) -> None:
        tags = dict(self.tags or {})
        for key, value in tags.items():
            if not isinstance(key, str) or not key.strip():
                raise EndpointConfigError(f"tag key {key!r} is not valid: give a non-empty string.")
            if not isinstance(value, str):
                raise EndpointConfigError(
                    f"tag {key!r}={value!r} is not valid: tag values are strings."
                )
        object.__setattr__(self, "tags", tags)

    @property
    def entities(self) -> tuple[ServedEntitySpec, ...]:
        primary = ServedEntitySpec(
            self.entity_name, self.entity_version, self.plan, self.served_entity_name
        )
        return (primary, *self.additional_entities)

    @property
    def scale_to_zero_enabled(self) -> bool:
        return self.plan.scale_to_zero_enabled

    def served_entities(self) -> list[ServedEntityInput]:
        return [e.to_sdk() for e in self.entities]

    def traffic_config(self) -> TrafficConfig | None:
        """Explicit routes when given; otherwise None (the server routes 100% to the one entity)."""
        if self.traffic is None:
            return None
        return TrafficConfig(
            routes=[
                Route(served_model_name=name, traffic_percentage=pct)
                for name, pct in self.traffic.items()
            ]
        )

    def core_config(self) -> EndpointCoreConfigInput:
        return EndpointCoreConfigInput(
            name=self.name,
            served_entities=self.served_entities(),
            traffic_config=self.traffic_config(),
        )

    def endpoint_tags(self) -> list[EndpointTag]:
        return [EndpointTag(key=k, value=v) for k, v in self.tags.items()]


# --------------------------------------------------------------------------- state


def _value(enum_or_none: Any) -> str:
    return getattr(enum_or_none, "value", None) or "UNKNOWN"


def describe_state(ep: ServingEndpointDetailed) -> str:
    """``ready=NOT_READY config_update=IN_PROGRESS llama-3=DEPLOYMENT_CREATING``."""
    state = ep.state
    parts = [
        f"ready={_value(state.ready if state else None)}",
        f"config_update={_value(state.config_update if state else None)}",
    ]
    for cfg in (ep.pending_config, ep.config):
        for se in (cfg.served_entities or []) if cfg else []:
            if se.state and se.state.deployment:
                parts.append(f"{se.name}={se.state.deployment.value}")
    return " ".join(dict.fromkeys(parts))


def _deployment_messages(
    ep: ServingEndpointDetailed, *, failed_only: bool = False, pending_only: bool = False
) -> list[str]:
    """The served entities' own messages, the pending (failing) config first."""
    out: list[str] = []
    for cfg in (ep.pending_config,) if pending_only else (ep.pending_config, ep.config):
        for se in (cfg.served_entities or []) if cfg else []:
            st = se.state
            if st is None or not (st.deployment_state_message or st.deployment):
                continue
            if failed_only and st.deployment not in _FAILED_DEPLOYMENTS:
                continue
            msg = f"{se.name}: {_value(st.deployment)}"
            if st.deployment_state_message:
                msg += f": {st.deployment_state_message}"
            if msg not in out:
                out.append(msg)
    return out


def _is_ready(ep: ServingEndpointDetailed) -> bool:
    return (
        ep.state is not None
        and ep.state.ready == EndpointStateReady.READY
        and ep.state.config_update == EndpointStateConfigUpdate.NOT_UPDATING
    )


def _is_not_in_progress(ep: ServingEndpointDetailed) -> bool:
    return ep.state is None or ep.state.config_update != EndpointStateConfigUpdate.IN_PROGRESS


def _failure(ep: ServingEndpointDetailed) -> str | None:
    """Why waiting further is pointless, or None."""
    state = ep.state
    if state is None:
        return None
    if state.config_update in _FAILED_UPDATES:
        messages = (
            _deployment_messages(ep, pending_only=True)
            or _deployment_messages(ep)
            or ["no deployment message"]
        )
        return f"config update {state.config_update.value}: " + "; ".join(messages)
    if (
        state.config_update == EndpointStateConfigUpdate.NOT_UPDATING
        and state.ready != EndpointStateReady.READY
    ):
        failed = _deployment_messages(ep, failed_only=True)
        if failed:
            return "served entity deployment failed: " + "; ".join(failed)
    return None


def _seconds(timeout: float | timedelta) -> float:
    seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)
    if not seconds > 0:
        raise EndpointConfigError(
            f"timeout={timeout!r} is not valid: give a positive number of seconds or a timedelta."
        )
    return seconds


def _poll(
    w: WorkspaceClient,
    name: str,
    *,
    deadline: float,
    clock: Clock,
    poll_interval: float,
    progress: Progress,
    done: Callable[[ServingEndpointDetailed], bool],
    desc: str,
    goal: str,
    fail_on_failure: bool,
) -> ServingEndpointDetailed:
    delay = min(FIRST_POLL_DELAY, poll_interval)
    start = clock.time()
    with reporter(progress, f"{desc} {name}", describe_state) as report:
        while True:
            ep = get_endpoint(w, name)
            state_text = describe_state(ep)
            report(ep)
            if done(ep):
                return ep
            if fail_on_failure:
                why = _failure(ep)
                if why is not None:
                    raise EndpointError(
                        f"serving endpoint {name!r} failed: {why} (state: {state_text}). "
                        "Fix the cause (build logs: w.serving_endpoints.build_logs(name, "
                        "served_model_name)) and run create_or_update again."
                    )
            remaining = deadline - clock.time()
            if remaining <= 0:
                messages = "; ".join(_deployment_messages(ep))
                err = EndpointTimeoutError(
                    f"serving endpoint {name!r} did not reach {goal} within "
                    f"{clock.time() - start:.0f} s; last state: "
                    f"{state_text}{f' ({messages})' if messages else ''}. Provisioned-"
                    "throughput endpoints can take 30 minutes or more on Databricks (GPU "
                    "capacity): wait longer with wait_until_ready(w, name, timeout=...) or "
                    "check the endpoint in the Serving UI."
                )
                err.last_endpoint = ep  # type: ignore[attr-defined]
                raise err
            clock.sleep(min(delay, remaining))
            delay = min(delay * 2, poll_interval)


def wait_until_ready(
    w: WorkspaceClient,
    name: str,
    *,
    timeout: float | timedelta = DEFAULT_TIMEOUT,
    clock: Clock | None = None,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    progress: Progress = True,
) -> ServingEndpointDetailed:
    """Poll until the endpoint is READY and NOT_UPDATING; return it.

    Raises ``EndpointError`` with the endpoint's deployment messages on
    ``UPDATE_FAILED``/``UPDATE_CANCELED`` (or a served entity that failed for good), and
    ``EndpointTimeoutError`` naming the last state after ``timeout`` (seconds or
    ``timedelta``). ``clock`` is any ``ptdeploy.clock.Clock`` (a fake in tests).
    ``progress``: ``True`` draws a bar, ``False`` nothing, and a callable is called with
    each polled endpoint, as the SDK's waiters call ``callback`` (``ptdeploy.progress``).
    """
    check_endpoint_name(name)
    clock = clock or RealClock()
    deadline = clock.time() + _seconds(timeout)
    return _poll(
        w,
        name,
        deadline=deadline,
        clock=clock,
        poll_interval=poll_interval,
        progress=progress,
        done=_is_ready,
        desc="waiting for",
        goal="READY / NOT_UPDATING",
        fail_on_failure=True,
    )


# ---------------------------------------------------------------------------- CRUD


def _host(w: WorkspaceClient) -> str:
    return str(getattr(getattr(w, "config", None), "host", None) or "the workspace")


def get_endpoint(w: WorkspaceClient, name: str) -> ServingEndpointDetailed:
    """The endpoint's details; ``EndpointNotFoundError`` (naming it) when it does not exist."""
    check_endpoint_name(name)
    try:
        return w.serving_endpoints.get(name)
    except NotFound as exc:
        raise EndpointNotFoundError(
            f"serving endpoint {name!r} does not exist in {_host(w)}. Check the name "
            "(w.serving_endpoints.list() shows the existing ones) or create it with "
            "ptdeploy.serving.endpoints.create_or_update."
        ) from exc


def _find(w: WorkspaceClient, name: str) -> ServingEndpointDetailed | None:
    try:
        return get_endpoint(w, name)
    except EndpointNotFoundError:
        return None


def delete_endpoint(w: WorkspaceClient, name: str, missing_ok: bool = True) -> bool:
    """Delete the endpoint; True if it was deleted, False if it was already absent.

    With ``missing_ok=False`` an absent endpoint raises ``EndpointNotFoundError``.
    """
    check_endpoint_name(name)
    try:
        w.serving_endpoints.delete(name)
    except NotFound as exc:
        if missing_ok:
            return False
        raise EndpointNotFoundError(
            f"serving endpoint {name!r} cannot be deleted: it does not exist in {_host(w)}."
        ) from exc
    return True


def _config_matches(ep: ServingEndpointDetailed, spec: EndpointSpec) -> bool:
    """True when the endpoint already serves exactly what ``spec`` asks, with nothing pending."""
    if ep.state is None or ep.state.config_update != EndpointStateConfigUpdate.NOT_UPDATING:
        return False
    if ep.pending_config is not None or ep.config is None:
        return False
    current = {
        (
            se.name,
            se.entity_name,
            str(se.entity_version) if se.entity_version is not None else None,
            se.min_provisioned_throughput,
            se.max_provisioned_throughput,
            se.provisioned_model_units,
            bool(se.scale_to_zero_enabled),
        )
        for se in ep.config.served_entities or []
    }
    if current != {e._signature() for e in spec.entities}:
        return False
    routes = {
        (r.served_entity_name or r.served_model_name): r.traffic_percentage
        for r in ((ep.config.traffic_config.routes or []) if ep.config.traffic_config else [])
    }
    wanted = dict(spec.traffic) if spec.traffic is not None else {spec.served_entity_name: 100}
    routes = {k: v for k, v in routes.items() if v}
    wanted = {k: v for k, v in wanted.items() if v}
    if not routes:  # no routes reported: the server routes everything to the one entity
        return spec.traffic is None
    return routes == wanted


def _refused(exc: Exception, spec: EndpointSpec, action: str) -> Exception:
    entities = ", ".join(f"{e.entity_name} v{e.entity_version}" for e in spec.entities)
    text = f"the serving API refused to {action} endpoint {spec.name!r} (serving {entities}): {exc}"
    if isinstance(exc, BadRequest):
        return EndpointConfigError(text)
    return EndpointError(text)


def _create(w: WorkspaceClient, spec: EndpointSpec) -> bool:
    """Create the endpoint; False if a concurrent creator got there first (409)."""
    try:
        from ptdeploy.serving.cleanup import MANAGED_TAG

        managed = EndpointTag(key=MANAGED_TAG[0], value=MANAGED_TAG[1])  # for ptdeploy cleanup
        w.serving_endpoints.create(
            spec.name,
            config=spec.core_config(),
            tags=[*spec.endpoint_tags(), managed],
        )
    except (ResourceAlreadyExists, AlreadyExists):
        return False
    except ResourceConflict as exc:
        if exc.error_code in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            return False
        raise _refused(exc, spec, "create") from exc
    except (BadRequest, NotFound) as exc:
        raise _refused(exc, spec, "create") from exc
    return True


def _update(
    w: WorkspaceClient,
    spec: EndpointSpec,
    *,
    deadline: float,
    clock: Clock,
    poll_interval: float,
    progress: Progress,
) -> None:
    """``update_config``, waiting out (and retrying after) an update someone else started."""
    attempts = 3
    for attempt in range(1, attempts + 1):
        try:
            w.serving_endpoints.update_config(
                spec.name,
                served_entities=spec.served_entities(),
                traffic_config=spec.traffic_config(),
            )
            return
        except (ResourceConflict, InvalidState) as exc:
            # Another update started between our check and our call: wait it out, retry.
            if attempt == attempts:
                raise _refused(exc, spec, "update") from exc
            _wait_out_update(
                w,
                spec.name,
                deadline=deadline,
                clock=clock,
                poll_interval=poll_interval,
                progress=progress,
            )
        except (BadRequest, NotFound) as exc:
            raise _refused(exc, spec, "update") from exc


def _wait_out_update(
    w: WorkspaceClient,
    name: str,
    *,
    deadline: float,
    clock: Clock,
    poll_interval: float,
    progress: Progress,
) -> ServingEndpointDetailed:
    return _poll(
        w,
        name,
        deadline=deadline,
        clock=clock,
        poll_interval=poll_interval,
        progress=progress,
        done=_is_not_in_progress,
        desc="waiting out the update in progress of",
        goal="the end of the update already in progress",
        fail_on_failure=False,  # a failed earlier update is what we are about to replace
    )


def _apply_gateway(w: WorkspaceClient, spec: EndpointSpec, ep: ServingEndpointDetailed) -> None:
    if spec.ai_gateway is None:
        return
    kwargs = spec.ai_gateway.put_kwargs()
    desired = spec.ai_gateway.inference_table
    current = ep.ai_gateway.inference_table_config if ep.ai_gateway else None
    if (
        desired is not None
        and desired.enabled
        and current is not None
        and current.enabled
        and (current.catalog_name, current.schema_name, current.table_name_prefix)
        != (desired.catalog_name, desired.schema_name, desired.table_name_prefix)
    ):
        # Databricks refuses to move an enabled inference table: disable it first.
        off = dict(kwargs, inference_table_config=AiGatewayInferenceTableConfig(enabled=False))
        w.serving_endpoints.put_ai_gateway(spec.name, **off)
    w.serving_endpoints.put_ai_gateway(spec.name, **kwargs)


def _apply_tags(w: WorkspaceClient, spec: EndpointSpec, ep: ServingEndpointDetailed) -> None:
    current = {t.key: t.value for t in ep.tags or []}
    changed = [EndpointTag(key=k, value=v) for k, v in spec.tags.items() if current.get(k) != v]
    if changed:
        w.serving_endpoints.patch(spec.name, add_tags=changed)


def create_or_update(
    w: WorkspaceClient,
    spec: EndpointSpec,
    *,
    timeout: float | timedelta = DEFAULT_TIMEOUT,
    clock: Clock | None = None,
    progress: Progress = True,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    force_update: bool = False,
) -> ServingEndpointDetailed:
    """Bring endpoint ``spec.name`` to ``spec`` and wait until it is ready; return it.

    Absent: created (tags included). Present: an update in progress is waited out, then
    the config is updated, unless the endpoint already serves exactly this config
    (``force_update=True`` updates anyway). A 409 from a concurrent create becomes an
    update. AI Gateway (``put_ai_gateway``) and tags (``patch``) are applied once the
    endpoint is ready. ``timeout`` bounds the whole call.
    """
    if not isinstance(spec, EndpointSpec):
        raise EndpointConfigError(
            f"spec={spec!r} is not a ptdeploy.serving.endpoints.EndpointSpec."
        )
    clock = clock or RealClock()
    deadline = clock.time() + _seconds(timeout)
    timing = {
        "deadline": deadline,
        "clock": clock,
        "poll_interval": poll_interval,
        "progress": progress,
    }

    existing = _find(w, spec.name)
    created = existing is None and _create(w, spec)
    if not created:
        current = _wait_out_update(w, spec.name, **timing)
        if force_update or not _config_matches(current, spec):
            _update(w, spec, **timing)
    remaining = deadline - clock.time()
    ep = wait_until_ready(
        w,
        spec.name,
        timeout=max(remaining, 1e-9),
        clock=clock,
        poll_interval=poll_interval,
        progress=progress,
    )
    if spec.ai_gateway is not None:
        _apply_gateway(w, spec, ep)
    if not created and spec.tags:
        _apply_tags(w, spec, ep)
    if spec.ai_gateway is not None or (not created and spec.tags):
        ep = get_endpoint(w, spec.name)
    return ep
