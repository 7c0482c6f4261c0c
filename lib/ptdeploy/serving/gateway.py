"""AI Gateway, tags and canary from a template's parameters: what the notebook's flat,
typed parameters mean for the endpoint.

The deployment templates declare (``templates.specs.GATEWAY``):

- ``usage_tracking`` (bool): AI Gateway ``usage_tracking_config.enabled``;
- ``inference_table_catalog`` / ``inference_table_schema`` / ``inference_table_prefix``:
  AI Gateway ``inference_table_config`` {catalog_name, schema_name, table_name_prefix,
  enabled}; an empty catalog turns the inference table off;
- ``rate_limit_calls_per_minute``: one AI Gateway ``rate_limits`` entry {calls, key
  ``endpoint``, renewal_period ``minute``}; empty: no limit;
- ``tags``: ``key=value,key2=value2``, added to the endpoint (never removed);
- ``canary_percent``: 1-99 sends that share of the traffic to the new version and the
  rest to the current champion (``traffic_config.routes``); empty or 0: no canary.

Shapes: PUT /api/2.0/serving-endpoints/{name}/ai-gateway
(https://docs.databricks.com/api/workspace/servingendpoints/putaigateway) and
https://docs.databricks.com/aws/en/ai-gateway/configure-ai-gateway-endpoints; traffic
routes: ``traffic_config.routes`` [{served_entity_name, traffic_percentage}]
(https://docs.databricks.com/api/workspace/servingendpoints/updateconfig).

This module imports no SDK at import time: ``specs`` uses its checks to read a spec.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ptdeploy import limits
from ptdeploy.errors import ParameterError

if TYPE_CHECKING:
    from ptdeploy.serving.endpoints import GatewaySpec

GATEWAY_PARAMETERS = (
    "usage_tracking",
    "inference_table_catalog",
    "inference_table_schema",
    "inference_table_prefix",
    "rate_limit_calls_per_minute",
)
TAGS_HELP = "key=value pairs separated by commas, e.g. team=ml,cost_center=42"
CANARY_MIN, CANARY_MAX = 1, 99


# ---------------------------------------------------------------- parameter checks


def parse_tags(text: str | None) -> dict[str, str]:
    """``"team=ml,cost_center=42"`` -> ``{"team": "ml", "cost_center": "42"}``.

    Raises ``ValueError`` with the reason (the parameter layer adds the name)."""
    tags: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise ValueError(f"{part.strip()!r} is not key=value; expected {TAGS_HELP}")
        if key in tags:
            raise ValueError(f"tag {key!r} appears twice")
        if len(key) > limits.MAX_TAG_KEY_LENGTH or len(value) > limits.MAX_TAG_VALUE_LENGTH:
            raise ValueError(
                f"tag {key!r}: keys are at most {limits.MAX_TAG_KEY_LENGTH} characters and "
                f"values at most {limits.MAX_TAG_VALUE_LENGTH}"
            )
        tags[key] = value
    if len(tags) > limits.MAX_TAGS:
        raise ValueError(f"{len(tags)} tags; an endpoint has at most {limits.MAX_TAGS}")
    return tags


def check_tags(text: str) -> None:
    parse_tags(text)


def check_canary_percent(value: int) -> None:
    if value != 0 and not CANARY_MIN <= value <= CANARY_MAX:
        raise ValueError(
            f"a canary gets {CANARY_MIN} to {CANARY_MAX} percent of the traffic "
            "(0 or empty: no canary)"
        )


def check_parameters(values: Mapping[str, Any]) -> None:
    """Cross-checks of the gateway parameters (a spec's ``cross_checks``)."""
    catalog, schema = values.get("inference_table_catalog"), values.get("inference_table_schema")
    prefix = values.get("inference_table_prefix")
    known = "inference_table_catalog" in values and "inference_table_schema" in values
    if known and (catalog is None) != (schema is None):
        raise ParameterError(
            f"parameters 'inference_table_catalog'={catalog!r} and 'inference_table_schema'="
            f"{schema!r}: give both to log requests and responses to an inference table, or "
            "neither to turn it off."
        )
    if prefix is not None and catalog is None and "inference_table_catalog" in values:
        raise ParameterError(
            f"parameter 'inference_table_prefix'={prefix!r} needs 'inference_table_catalog' and "
            "'inference_table_schema' (the table is <catalog>.<schema>.<prefix>_payload)."
        )


# ---------------------------------------------------------------- what they build


def canary_percent(p: Mapping[str, Any]) -> int:
    """The canary's share of traffic (0: no canary)."""
    return int(p.get("canary_percent") or 0)


def gateway_spec(p: Mapping[str, Any]) -> GatewaySpec | None:
    """The AI Gateway the parameters ask for; None when none is set (the endpoint's
    gateway is then left as it is)."""
    from ptdeploy.serving.endpoints import GatewaySpec, InferenceTable, RateLimit

    usage = bool(p.get("usage_tracking"))
    catalog = p.get("inference_table_catalog")
    calls = p.get("rate_limit_calls_per_minute")
    if not usage and catalog is None and calls is None:
        return None
    table = (
        InferenceTable(
            catalog_name=catalog,
            schema_name=p["inference_table_schema"],
            table_name_prefix=p.get("inference_table_prefix"),
        )
        if catalog is not None
        else None
    )
    return GatewaySpec(
        usage_tracking=usage,
        inference_table=table,
        rate_limits=(RateLimit(calls=int(calls)),) if calls is not None else (),
    )


def tags(p: Mapping[str, Any]) -> dict[str, str]:
    return parse_tags(p.get("tags"))


def describe(p: Mapping[str, Any]) -> str:
    """One line for the notebook: what the gateway, tags and canary parameters set."""
    parts = [f"usage tracking {'on' if p.get('usage_tracking') else 'off'}"]
    if p.get("inference_table_catalog"):
        parts.append(f"inference table {payload_table_name(p)}")
    if p.get("rate_limit_calls_per_minute"):
        parts.append(f"rate limit {p['rate_limit_calls_per_minute']} calls/minute")
    if p.get("tags"):
        parts.append(f"tags {parse_tags(p['tags'])}")
    if canary_percent(p):
        parts.append(f"canary {canary_percent(p)}%")
    return "AI Gateway: " + ", ".join(parts)


def payload_table_name(p: Mapping[str, Any]) -> str:
    """``<catalog>.<schema>.<prefix>_payload`` (Databricks' name for the payload table;
    the prefix defaults to the endpoint name)."""
    prefix = p.get("inference_table_prefix") or p.get("endpoint_name") or ""
    return f"{p['inference_table_catalog']}.{p['inference_table_schema']}.{prefix}_payload"


def check_inference_table_catalog(w: Any, p: Mapping[str, Any]) -> None:
    """The inference table's catalog must exist (asked through the SDK: Unity Catalog on
    Databricks, the local registry's catalogs offline). Raises ``ParameterError``."""
    catalog = p.get("inference_table_catalog")
    if catalog is None:
        return
    from databricks.sdk.errors import NotFound

    try:
        w.catalogs.get(catalog)
    except NotFound as exc:
        raise ParameterError(
            f"parameter 'inference_table_catalog'={catalog!r}: catalog {catalog!r} does not "
            f"exist in {w.config.host} ({exc}). Give an existing catalog (on the local target: "
            "'main', or the catalog of a registered model), or leave it empty to turn the "
            "inference table off."
        ) from exc
