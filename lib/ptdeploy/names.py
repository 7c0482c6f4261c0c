"""Names Databricks checks: serving endpoint and served entity names, Unity Catalog
three-level model names and aliases. The one home of each rule: the client checks a name
before calling a workspace and the local workspace refuses it with the same words.

Unity Catalog object names may not contain a period, a space, a forward slash, ASCII
control characters or DEL, and are at most 255 characters; UC stores them in lower case,
so an upper-case name would come back different from what the user typed: refuse it with
the lower-case suggestion instead of renaming silently.
"""

from __future__ import annotations

import re
from typing import Any

from ptdeploy.errors import EndpointConfigError, ParameterError, not_valid
from ptdeploy.limits import (
    ENDPOINT_NAME_MAX_LENGTH,
    ENDPOINT_NAME_PATTERN,
    SERVED_ENTITY_NAME_PATTERN,
)

_UC_PART_FORBIDDEN = re.compile(r"[.\s/\x00-\x1f\x7f]")
_ALIAS = re.compile(r"^[A-Za-z0-9_-]{1,255}$")


def check_endpoint_name(name: Any, field: str = "endpoint name") -> str:
    """``name`` if Databricks accepts it as a serving endpoint name, else EndpointConfigError.

    "An endpoint name can consist of alphanumeric characters, dashes, and underscores"
    (CreateServingEndpoint.name, https://docs.databricks.com/api/workspace/servingendpoints/create);
    the length and the first character are ptdeploy's rule (``limits.ENDPOINT_NAME_PATTERN``).
    """
    if isinstance(name, str) and ENDPOINT_NAME_PATTERN.fullmatch(name):
        return name
    expected = (
        f"1 to {ENDPOINT_NAME_MAX_LENGTH} letters, digits, '-' and '_', starting with a "
        "letter or digit"
    )
    if isinstance(name, str):
        suggestion = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-_")[:ENDPOINT_NAME_MAX_LENGTH]
        expected += f" (e.g. {suggestion or 'llama-completions'!r})"
    raise EndpointConfigError(not_valid(field, name, expected))


def check_served_entity_name(name: Any, field: str = "served entity name") -> str:
    """``name`` if it is a valid served entity name (letters, digits, '-' and '_')."""
    if isinstance(name, str) and SERVED_ENTITY_NAME_PATTERN.fullmatch(name):
        return name
    raise EndpointConfigError(
        not_valid(field, name, "1 to 63 letters, digits, '-' and '_' (a served entity name)")
    )


def default_served_entity_name(entity_name: str, version: str) -> str:
    """Databricks' default served entity name: ``<model>-<version>`` from the last level
    of the registered name, sanitized (``system.ai.meta_llama_v3_1_8b_instruct`` version 3
    is served as ``meta_llama_v3_1_8b_instruct-3``).

    The client sends it explicitly, so traffic routes and the "already serving this
    config" check know the name in advance; the local workspace gives it when omitted.
    """
    base = re.sub(r"[^A-Za-z0-9_-]+", "-", entity_name.rsplit(".", 1)[-1]).strip("-")
    return f"{base or 'model'}-{version}"


def check_uc_part(value: str, what: str) -> str:
    """One level of a UC name (catalog, schema or model)."""
    if not isinstance(value, str) or not value:
        raise ParameterError(f"{what} is empty: give a Unity Catalog name such as 'main'.")
    if len(value) > 255:
        raise ParameterError(f"{what}={value!r} is longer than 255 characters.")
    bad = _UC_PART_FORBIDDEN.search(value)
    if bad:
        raise ParameterError(
            f"{what}={value!r} contains {bad.group()!r}: Unity Catalog names may not contain "
            "periods, spaces, slashes or control characters (use letters, digits, '_')."
        )
    if value != value.lower():
        raise ParameterError(
            f"{what}={value!r} has upper-case letters; Unity Catalog stores names in lower "
            f"case. Use {value.lower()!r}."
        )
    return value


def uc_part_check(what: str):
    """``check_uc_part`` as a parameter check: raises ``ValueError`` with the reason only
    (``parameters.Param`` adds the parameter's name and value)."""

    def check(value: str) -> None:
        try:
            check_uc_part(value, what)
        except ParameterError as exc:
            raise ValueError(str(exc).split(": ", 1)[-1]) from None

    return check


def registered_model_name(catalog: str, schema: str, model: str) -> str:
    """``catalog.schema.model``, each level checked."""
    return ".".join(
        (
            check_uc_part(catalog, "catalog"),
            check_uc_part(schema, "schema"),
            check_uc_part(model, "model_name"),
        )
    )


def check_registered_model_name(name: str, *, unity_catalog: bool) -> str:
    """A full registered model name as the registry accepts it.

    Unity Catalog (``databricks-uc``) requires three levels; the local registry accepts the
    same names (so a rehearsal uses the real ones) and, for convenience, a plain one-level
    name (``unity_catalog=False``). The rule takes a flag, not a target, so the local
    workspace can apply it without importing the client side.
    """
    if not isinstance(name, str) or not name.strip():
        raise ParameterError("registered model name is empty: give 'catalog.schema.model'.")
    parts = name.split(".")
    if len(parts) == 3:
        registered_model_name(*parts)
        return name
    if unity_catalog:
        raise ParameterError(
            f"registered model name {name!r} has {len(parts)} level(s); Unity Catalog "
            "(registry 'databricks-uc') needs three: 'catalog.schema.model', e.g. "
            f"'main.default.{parts[-1] or 'my_model'}'."
        )
    if len(parts) == 1:
        check_uc_part(name, "model_name")
        return name
    raise ParameterError(
        f"registered model name {name!r} has {len(parts)} levels; use 'catalog.schema.model' "
        "(or one plain name on the local target)."
    )


def check_alias(alias: str) -> str:
    """An MLflow model alias: letters, digits, '_' and '-'; not 'latest' nor 'v<N>'."""
    if not isinstance(alias, str) or not _ALIAS.match(alias):
        raise ParameterError(
            f"alias={alias!r} is not valid: use letters, digits, '_' or '-' (e.g. 'champion')."
        )
    if alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise ParameterError(
            f"alias={alias!r} is reserved by MLflow ('latest' and 'v<number>' name versions); "
            "choose another, e.g. 'champion'."
        )
    return alias


# The AI Gateway's tables (https://docs.databricks.com/aws/en/ai-gateway/configure-ai-gateway-endpoints):
# usage lands in a system table, payloads in ``<catalog>.<schema>.<prefix>_payload``.
USAGE_TABLE = "system.serving.endpoint_usage"
PAYLOAD_SUFFIX = "_payload"
