"""Validation of the local workspace's requests, before anything is written.

Every function here takes the JSON a client sent and returns typed values or raises a
400 (``INVALID_PARAMETER_VALUE``) whose message names the field, what was given and what
would be valid. Limits come from ``ptdeploy.limits`` (one home, with their sources).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Protocol

from databricks.sdk.service.serving import ServingModelWorkloadType

from ptdeploy import limits
from ptdeploy import names as name_rules
from ptdeploy.errors import (
    EndpointConfigError,
    ModelVersionNotFoundError,
    ParameterError,
    not_valid,
)
from ptdeploy.llm_tasks import TASK_CHAT, TASK_COMPLETIONS, TASK_EMBEDDINGS
from ptdeploy.workspace import store as st
from ptdeploy.workspace.optimization_info import ModelDescription
from ptdeploy.workspace.protocol import invalid

# the request field that identifies each task's request body
TASK_FIELD = {TASK_CHAT: "messages", TASK_COMPLETIONS: "prompt", TASK_EMBEDDINGS: "input"}
WORKLOAD_SIZES = ("Small", "Medium", "Large")
WORKLOAD_TYPES = tuple(t.value for t in ServingModelWorkloadType)


class Catalog(Protocol):
    """Model versions of the registry (``optimization_info.RegistryCatalog``)."""

    def describe(self, name: str, version: str) -> ModelDescription: ...


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_field(value: Any, field: str, unit: str = "tokens per second") -> int:
    """An integer as Databricks' JSON accepts it (a number, or a string of digits)."""
    if _is_int(value):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    raise invalid(not_valid(field, value, f"an integer ({unit})"))


def _bool_field(value: Any, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise invalid(not_valid(field, value, "true or false"))


def _str_field(value: Any, field: str) -> str:
    if isinstance(value, str) and value.strip():
        return value.strip()
    if value is None:
        raise invalid(f"{field} is required.")
    raise invalid(not_valid(field, value, "a non-empty string"))


def endpoint_name_field(name: Any) -> str:
    """The endpoint name of a create request, by the client's rule (``names``)."""
    if name is None or name == "":
        raise invalid("name is required: the name of the serving endpoint.")
    try:
        return name_rules.check_endpoint_name(name, "name")
    except EndpointConfigError as exc:
        raise invalid(str(exc)) from exc


def _multiples(chunk: int) -> str:
    return f"{chunk}, {2 * chunk}, {3 * chunk}, ..."


def parse_served_entities(
    raw: Any,
    *,
    field: str,
    catalog: Catalog,
    creator: str,
    now_ms: int,
) -> list[st.ServedEntity]:
    """Validate ``served_entities`` (or legacy ``served_models``) completely."""
    if raw is None:
        raise invalid(
            f"{field} is required: a list of served entities such as "
            '[{"entity_name": "catalog.schema.model", "entity_version": "1", '
            '"min_provisioned_throughput": 0, "max_provisioned_throughput": <chunk size>}].'
        )
    if not isinstance(raw, list) or not raw:
        raise invalid(
            f"{field}={raw!r} is not valid: expected a non-empty list of served entities."
        )
    if len(raw) > limits.MAX_SERVED_ENTITIES:
        raise invalid(
            f"{field} has {len(raw)} served entities; an endpoint serves at most "
            f"{limits.MAX_SERVED_ENTITIES}."
        )
    entities: list[st.ServedEntity] = []
    for i, item in enumerate(raw):
        entities.append(
            _parse_served_entity(
                item, f"{field}[{i}]", catalog=catalog, creator=creator, now_ms=now_ms
            )
        )
    names = [e.name for e in entities]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise invalid(
            f"{field}: served entity name(s) {', '.join(dupes)} appear more than once; give each "
            "served entity a unique 'name'."
        )
    tasks = {e.task for e in entities}
    if len(tasks) > 1:
        detail = ", ".join(f"{e.name}: {e.task}" for e in entities)
        raise invalid(
            f"{field}: all served entities of an endpoint must have the same task; got {detail}."
        )
    return entities


def _parse_served_entity(
    item: Any, field: str, *, catalog: Catalog, creator: str, now_ms: int
) -> st.ServedEntity:
    if not isinstance(item, dict):
        raise invalid(not_valid(field, item, "an object"))
    if item.get("external_model") is not None:
        raise invalid(
            f"{field}.external_model is not supported by the local workspace: it serves "
            "models of the local registry (entity_name, entity_version)."
        )
    # served_models (deprecated) name them model_name / model_version
    entity_key = (
        "entity_name" if "entity_name" in item or "model_name" not in item else "model_name"
    )
    version_key = (
        "entity_version"
        if "entity_version" in item or "model_version" not in item
        else "model_version"
    )
    entity_name = _str_field(item.get(entity_key), f"{field}.{entity_key}")
    raw_version = item.get(version_key)
    if raw_version is None:
        raise invalid(f"{field}.{version_key} is required: the registered model version, e.g. '1'.")
    version = (
        str(raw_version).strip() if _is_int(raw_version) or isinstance(raw_version, str) else None
    )
    if not version or not version.isdigit():
        raise invalid(
            f"{field}.{version_key}={raw_version!r} is not valid: expected a version number such as '1'."
        )
    try:
        desc = catalog.describe(entity_name, version)
    except ModelVersionNotFoundError as exc:
        raise invalid(f"{field}: {exc}") from exc
    if desc.task not in TASK_FIELD:
        raise invalid(
            f"{field}: model {entity_name} version {version} was logged with task "
            f"{desc.task!r}; the local workspace serves models logged with task "
            f"{', '.join(TASK_FIELD)} (mlflow.transformers.log_model(task=...))."
        )
    name = item.get("name")
    if name is None:
        name = name_rules.default_served_entity_name(entity_name, version)
    else:
        try:
            name_rules.check_served_entity_name(name, f"{field}.name")
        except EndpointConfigError as exc:
            raise invalid(str(exc)) from exc
    model_units = desc.optimizable and desc.model_unit_chunk_size is not None
    has_units = item.get("provisioned_model_units") is not None
    if has_units and not model_units:
        raise invalid(
            f"{field}.provisioned_model_units is not valid for {entity_name} version {version}: "
            "get-model-optimization-info answers a throughput_chunk_size for it, so give "
            "min_provisioned_throughput / max_provisioned_throughput (tokens per second) instead."
        )
    has_min = item.get("min_provisioned_throughput") is not None
    has_max = item.get("max_provisioned_throughput") is not None
    workload_size = item.get("workload_size")
    scale_to_zero = _bool_field(
        item.get("scale_to_zero_enabled", False), f"{field}.scale_to_zero_enabled"
    )
    workload_type = item.get("workload_type")
    if workload_type is not None and workload_type not in WORKLOAD_TYPES:
        raise invalid(
            f"{field}.workload_type={workload_type!r} is not valid; use one of "
            f"{', '.join(WORKLOAD_TYPES)}."
        )
    env = item.get("environment_vars")
    if env is not None and (
        not isinstance(env, dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
    ):
        raise invalid(
            f"{field}.environment_vars is not valid: expected an object of string values."
        )
    if env is not None and len(env) > limits.MAX_ENVIRONMENT_VARS:
        raise invalid(
            f"{field}.environment_vars has {len(env)} variables; a served entity takes at most "
            f"{limits.MAX_ENVIRONMENT_VARS} ({limits.PAYLOAD_LIMITS_URL})."
        )
    entity = st.ServedEntity(
        name=name,
        entity_name=entity_name,
        entity_version=version,
        task=desc.task,
        scale_to_zero_enabled=scale_to_zero,
        workload_type=workload_type,
        environment_vars=env,
        creator=creator,
        creation_timestamp=now_ms,
    )
    if model_units and (has_units or has_min or has_max):
        return replace(
            entity,
            provisioned_model_units=_model_units(
                item, field, desc, tokens_given=has_min or has_max, scale_to_zero=scale_to_zero
            ),
        )
    if has_min or has_max:
        if workload_size is not None:
            raise invalid(
                f"{field}: give either workload_size or min/max_provisioned_throughput, not both "
                "(provisioned throughput sizes the endpoint in tokens per second)."
            )
        if not desc.optimizable:
            raise invalid(
                f"{field}: model {entity_name} version {version} is not eligible for provisioned "
                f"throughput: {desc.reason or 'get-model-optimization-info answers optimizable=false'}. "
                "Remove min/max_provisioned_throughput and give workload_size ('Small', "
                "'Medium', 'Large') to serve it without provisioned throughput."
            )
        return replace(entity, **_throughput(item, field, desc, scale_to_zero))
    if workload_size is None:
        if model_units:
            hint = (
                f"provisioned_model_units (a multiple of {desc.model_unit_chunk_size} model "
                f"units for this model: {_multiples(desc.model_unit_chunk_size or 1)})"
            )
        elif desc.optimizable:
            hint = (
                f"min_provisioned_throughput and max_provisioned_throughput (multiples of "
                f"{desc.throughput_chunk_size} tokens/s for this model: "
                f"{_multiples(desc.throughput_chunk_size or 10)})"
            )
        else:
            hint = "workload_size ('Small', 'Medium' or 'Large')"
        raise invalid(f"{field}: the compute size is missing; give {hint}.")
    if workload_size not in WORKLOAD_SIZES:
        raise invalid(
            f"{field}.workload_size={workload_size!r} is not valid; use one of {', '.join(WORKLOAD_SIZES)}."
        )
    return replace(entity, workload_size=workload_size)


def _throughput(
    item: dict[str, Any], field: str, desc: ModelDescription, scale_to_zero: bool
) -> dict[str, int]:
    chunk = int(desc.throughput_chunk_size or 1)
    raw_max = item.get("max_provisioned_throughput")
    if raw_max is None:
        raise invalid(
            f"{field}.max_provisioned_throughput is required with min_provisioned_throughput: "
            f"a multiple of the throughput chunk size {chunk} ({_multiples(chunk)})."
        )
    hi = _int_field(raw_max, f"{field}.max_provisioned_throughput")
    raw_min = item.get("min_provisioned_throughput")
    lo = 0 if raw_min is None else _int_field(raw_min, f"{field}.min_provisioned_throughput")
    model = f"{desc.name} version {desc.version}"
    for key, value in (("min_provisioned_throughput", lo), ("max_provisioned_throughput", hi)):
        _check_multiple(f"{field}.{key}", value, chunk, "tokens per second", model)
    most = chunk * limits.MAX_THROUGHPUT_CHUNKS
    if hi > most:
        raise invalid(
            f"{field}.max_provisioned_throughput={hi} is more than the local workspace provisions "
            f"for one served entity: at most {limits.MAX_THROUGHPUT_CHUNKS} chunks of {chunk} "
            f"tokens/s, {most} tokens/s for {model}."
        )
    if hi == 0:
        raise invalid(
            f"{field}.max_provisioned_throughput=0 is not valid: it must be at least one chunk, "
            f"{chunk} tokens/s for {model}."
        )
    if lo > hi:
        raise invalid(
            f"{field}.min_provisioned_throughput={lo} is greater than "
            f"max_provisioned_throughput={hi}; min must be <= max."
        )
    if scale_to_zero and lo > 0:
        raise invalid(
            f"{field}: scale_to_zero_enabled=true needs min_provisioned_throughput=0 (got {lo}); "
            "set min to 0 or disable scale to zero."
        )
    return {"min_provisioned_throughput": lo, "max_provisioned_throughput": hi}


# the chunk size each unit of provisioned capacity comes in (get-model-optimization-info)
_CHUNK_NAME = {"tokens per second": "throughput chunk size", "model units": "model unit chunk size"}


def _check_multiple(field: str, value: int, chunk: int, unit: str, model: str) -> None:
    """``value`` (in ``unit``) is 0 or more and a multiple of ``model``'s chunk size ``chunk``."""
    if value < 0:
        raise invalid(f"{field}={value} is negative; it is in {unit}, 0 or more.")
    if value % chunk:
        lower = value // chunk * chunk
        raise invalid(
            f"{field}={value} is not a multiple of the {_CHUNK_NAME[unit]} {chunk} of {model}; "
            f"valid values: {_multiples(chunk)} (nearest: {lower} or {lower + chunk}). Every "
            f"provisioned value of this model is a multiple of {chunk}."
        )


def _model_units(
    item: dict[str, Any],
    field: str,
    desc: ModelDescription,
    *,
    tokens_given: bool,
    scale_to_zero: bool,
) -> int:
    """``provisioned_model_units`` of a model provisioned in model units: a positive multiple
    of its ``model_unit_chunk_size``, instead of min/max_provisioned_throughput
    (https://docs.databricks.com/aws/en/machine-learning/foundation-model-apis/model-units)."""
    chunk = int(desc.model_unit_chunk_size or 1)
    model = f"{desc.name} version {desc.version}"
    if tokens_given:
        raise invalid(
            f"{field}: {model} is provisioned in model units (get-model-optimization-info "
            f"answers model_unit_chunk_size={chunk}): give provisioned_model_units, a "
            f"multiple of {chunk} ({_multiples(chunk)}), instead of "
            "min/max_provisioned_throughput."
        )
    if item.get("workload_size") is not None:
        raise invalid(
            f"{field}: give either workload_size or provisioned_model_units, not both "
            f"({model} is provisioned in model units)."
        )
    if scale_to_zero:
        raise invalid(
            f"{field}: scale_to_zero_enabled=true is not available with "
            f"provisioned_model_units: a model-units endpoint keeps its capacity; set it to "
            "false."
        )
    units = _int_field(
        item.get("provisioned_model_units"), f"{field}.provisioned_model_units", "model units"
    )
    _check_multiple(f"{field}.provisioned_model_units", units, chunk, "model units", model)
    if units == 0:
        raise invalid(
            f"{field}.provisioned_model_units=0 is not valid: it must be at least one chunk, "
            f"{chunk} model units for {model}."
        )
    most = chunk * limits.MAX_THROUGHPUT_CHUNKS
    if units > most:
        raise invalid(
            f"{field}.provisioned_model_units={units} is more than the local workspace "
            f"provisions for one served entity: at most {limits.MAX_THROUGHPUT_CHUNKS} chunks of "
            f"{chunk} model units, {most} for {model}."
        )
    return units


def parse_routes(raw: Any, entities: list[st.ServedEntity], field: str) -> list[st.Route]:
    """``traffic_config.routes``; default: 100% to a single entity, an even split otherwise."""
    names = [e.name for e in entities]
    if raw is None:
        share, rest = divmod(100, len(names))
        return [st.Route(n, share + (1 if i < rest else 0)) for i, n in enumerate(names)]
    if not isinstance(raw, dict):
        raise invalid(not_valid(field, raw, "an object with 'routes'"))
    routes_raw = raw.get("routes")
    if not isinstance(routes_raw, list) or not routes_raw:
        raise invalid(
            f"{field}.routes is required: a list such as "
            f'[{{"served_entity_name": "{names[0]}", "traffic_percentage": 100}}].'
        )
    routes: list[st.Route] = []
    for i, r in enumerate(routes_raw):
        f = f"{field}.routes[{i}]"
        if not isinstance(r, dict):
            raise invalid(not_valid(f, r, "an object"))
        target = r.get("served_entity_name", r.get("served_model_name"))
        if target not in names:
            raise invalid(
                f"{f}.served_entity_name={target!r} names no served entity of this config; "
                f"valid names: {', '.join(names)}."
            )
        pct = (
            _int_field(r.get("traffic_percentage"), f"{f}.traffic_percentage")
            if r.get("traffic_percentage") is not None
            else None
        )
        if pct is None or not 0 <= pct <= 100:
            raise invalid(
                f"{f}.traffic_percentage={r.get('traffic_percentage')!r} is not valid: an integer from 0 to 100."
            )
        if any(x.served_entity_name == target for x in routes):
            raise invalid(f"{f}: served entity {target!r} has more than one route.")
        routes.append(st.Route(target, pct))
    total = sum(r.traffic_percentage for r in routes)
    if total != 100:
        detail = ", ".join(f"{r.served_entity_name}={r.traffic_percentage}" for r in routes)
        raise invalid(
            f"{field}.routes: traffic percentages must add up to 100; got {total} ({detail})."
        )
    return routes


def parse_tags(raw: Any, field: str) -> list[dict[str, str]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise invalid(
            f"{field}={raw!r} is not valid: expected a list of {{'key', 'value'}} objects."
        )
    if len(raw) > limits.MAX_TAGS:
        raise invalid(f"{field} has {len(raw)} tags; an endpoint has at most {limits.MAX_TAGS}.")
    tags: dict[str, dict[str, str]] = {}
    for i, t in enumerate(raw):
        if not isinstance(t, dict) or not isinstance(t.get("key"), str) or not t["key"]:
            raise invalid(
                f"{field}[{i}]={t!r} is not valid: expected {{'key': <non-empty string>, 'value': <string>}}."
            )
        if len(t["key"]) > limits.MAX_TAG_KEY_LENGTH:
            raise invalid(
                f"{field}[{i}].key is {len(t['key'])} characters long; at most "
                f"{limits.MAX_TAG_KEY_LENGTH}."
            )
        value = t.get("value")
        if value is not None and not isinstance(value, str):
            raise invalid(not_valid(f"{field}[{i}].value", value, "a string"))
        if value is not None and len(value) > limits.MAX_TAG_VALUE_LENGTH:
            raise invalid(
                f"{field}[{i}].value is {len(value)} characters long; at most "
                f"{limits.MAX_TAG_VALUE_LENGTH}."
            )
        tags[t["key"]] = {"key": t["key"], **({"value": value} if value is not None else {})}
    return list(tags.values())


_RENEWAL = ("minute",)
_RATE_KEYS = ("user", "endpoint", "user_group", "service_principal")


def parse_rate_limits(raw: Any, field: str, *, gateway: bool) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise invalid(not_valid(field, raw, "a list of rate limits"))
    out = []
    for i, r in enumerate(raw):
        f = f"{field}[{i}]"
        if not isinstance(r, dict):
            raise invalid(not_valid(f, r, "an object"))
        if r.get("renewal_period") not in _RENEWAL:
            raise invalid(
                f"{f}.renewal_period={r.get('renewal_period')!r} is not valid; use 'minute'."
            )
        if r.get("key") is not None and r.get("key") not in _RATE_KEYS:
            raise invalid(
                f"{f}.key={r.get('key')!r} is not valid; use one of {', '.join(_RATE_KEYS)}."
            )
        limit = {k: v for k, v in r.items() if v is not None}
        if r.get("calls") is None and (not gateway or r.get("tokens") is None):
            raise invalid(f"{f}: give calls{' or tokens' if gateway else ''} (per renewal_period).")
        for key in ("calls", "tokens"):
            if r.get(key) is not None:
                value = _int_field(r[key], f"{f}.{key}")
                if value < 0:
                    raise invalid(f"{f}.{key}={value} is negative.")
                limit[key] = value
        out.append(limit)
    return out


def parse_ai_gateway(raw: Any, field: str = "ai_gateway") -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise invalid(not_valid(field, raw, "an object"))
    known = (
        "usage_tracking_config",
        "inference_table_config",
        "rate_limits",
        "guardrails",
        "fallback_config",
    )
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise invalid(f"{field}: unknown field(s) {', '.join(unknown)}; valid: {', '.join(known)}.")
    gw = {k: v for k, v in raw.items() if v is not None}
    for key in ("usage_tracking_config", "inference_table_config", "guardrails", "fallback_config"):
        if key in gw and not isinstance(gw[key], dict):
            raise invalid(not_valid(f"{field}.{key}", gw[key], "an object"))
        if key in gw and "enabled" in gw[key]:
            gw[key]["enabled"] = _bool_field(gw[key]["enabled"], f"{field}.{key}.enabled")
    if "rate_limits" in gw:
        gw["rate_limits"] = parse_rate_limits(
            gw["rate_limits"], f"{field}.rate_limits", gateway=True
        )
    return gw


def check_model_version_path(path: str) -> tuple[str, str]:
    """``<registered model name>/<version>`` of get-model-optimization-info, checked
    before the registry is asked (a name with '/' or '..' or a version that is not a
    number is a 400, not a registry error)."""
    name, _, version = path.rpartition("/")
    example = "e.g. main.default.my_model/1"
    if not name or not version:
        raise invalid(f"'{path}' is not '<registered model name>/<version>', {example}.")
    if not version.isascii() or not version.isdigit():
        raise invalid(
            f"version={version!r} is not valid: expected a version number such as '1' ({example})."
        )
    try:
        name_rules.check_registered_model_name(name, unity_catalog=False)
    except ParameterError as exc:
        raise invalid(f"name={name!r} is not a valid registered model name: {exc}") from exc
    return name, str(int(version))


# ---------------------------------------------------------------- invocations


def _rows(records: Any, field: str) -> list[dict[str, Any]]:
    if (
        not isinstance(records, list)
        or not records
        or not all(isinstance(r, dict) for r in records)
    ):
        raise invalid(f"{field} is not valid: expected a non-empty list of objects (one per row).")
    return records


def unwrap_request(body: dict[str, Any], task: str) -> dict[str, Any]:
    """Accept MLflow's serving wrappers around a task's request.

    ``{"inputs": {...}, "params": {...}}`` and ``dataframe_records`` / ``dataframe_split``
    / ``instances`` (one row a prompt or input) become the plain request the worker takes.
    """
    params = body.get("params") or {}
    if not isinstance(params, dict):
        raise invalid(not_valid("params", params, "an object"))
    if isinstance(body.get("inputs"), dict):
        return {**body["inputs"], **params}
    rows: list[dict[str, Any]] | None = None
    if "dataframe_records" in body:
        rows = _rows(body["dataframe_records"], "dataframe_records")
    elif "instances" in body:
        rows = _rows(body["instances"], "instances")
    elif "dataframe_split" in body:
        split = body["dataframe_split"]
        if (
            not isinstance(split, dict)
            or not isinstance(split.get("columns"), list)
            or not isinstance(split.get("data"), list)
        ):
            raise invalid(
                "dataframe_split is not valid: expected {'columns': [...], 'data': [[...], ...]}."
            )
        rows = _rows(
            [dict(zip(split["columns"], row, strict=False)) for row in split["data"]],
            "dataframe_split",
        )
    if rows is None:
        return body
    if len(rows) == 1:
        return {**rows[0], **params}
    key = TASK_FIELD[task]
    if task == TASK_CHAT:
        raise invalid(f"a {TASK_CHAT} request takes one conversation; got {len(rows)} rows.")
    rest = [{k: v for k, v in r.items() if k != key} for r in rows]
    if any(r != rest[0] for r in rest):
        raise invalid(
            f"rows differ in fields other than '{key}'; send one request per set of parameters."
        )
    values = [r.get(key) for r in rows]
    return {**rest[0], key: values, **params}


def check_request_task(body: dict[str, Any], task: str, endpoint: str) -> None:
    """A request for another task than the endpoint's is a 400 naming both."""
    own = TASK_FIELD[task]
    if own in body:
        return
    for other, field in TASK_FIELD.items():
        if other != task and field in body:
            raise invalid(
                f"Endpoint '{endpoint}' serves {task} requests (field '{own}'), but this request "
                f"has '{field}', the field of a {other} request."
            )
