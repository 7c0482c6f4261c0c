"""Errors ptdeploy raises on purpose.

Every one of them carries a message that names the field or object at fault, what was
given and what would be valid, so a notebook cell or a job run log is enough to fix it. This is the one home of every
exception class ptdeploy defines, the local workspace's included. Standard library only:
the offline ``dbutils`` loads it by path in a kernel where ptdeploy is not installed yet.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def not_valid(field: str, value: object, expected: str) -> str:
    """The one grammar of a refused value: ``field=value is not valid: expected ...``.

    ``expected`` says what would be valid (and, where it helps, an example); the client
    and the local workspace word every refused field this way.
    """
    return f"{field}={value!r} is not valid: expected {expected}."


class PtdeployError(Exception):
    """Base class: a failure ptdeploy detected and explained."""


class ParameterError(PtdeployError, ValueError):
    """A notebook or job parameter is unknown, missing or invalid."""


class ModelSourceError(PtdeployError, ValueError):
    """A model source (hub id, local directory, offline package) cannot be used."""


class ModelLoggingError(PtdeployError, ValueError):
    """A model cannot be logged with the requested task or options."""


class RegistryError(PtdeployError):
    """The model registry refused or failed an operation."""


class NotOptimizableError(PtdeployError):
    """The registered model cannot be served with provisioned throughput."""


class ThroughputError(PtdeployError, ValueError):
    """Provisioned throughput values are not valid for the model's chunk size."""


class EndpointError(PtdeployError):
    """A serving endpoint is in a failed state or did not become ready in time."""


class EndpointTimeoutError(EndpointError, TimeoutError):
    """The endpoint did not reach READY / NOT_UPDATING before the timeout."""


class EndpointConfigError(PtdeployError, ValueError):
    """An endpoint specification (name, routes, tags, AI Gateway) is invalid."""


class EndpointNotFoundError(EndpointError, LookupError):
    """The named serving endpoint does not exist in the workspace."""


class ModelVersionNotFoundError(RegistryError, LookupError):
    """The registered model or version the serving API was asked about does not exist."""


class CleanupError(EndpointError):
    """Listing or deleting ptdeploy's endpoints failed, or a filter matched none."""


class QueryError(PtdeployError, ValueError):
    """A query to a serving endpoint has invalid arguments or got an unusable answer."""


class WorkspaceError(PtdeployError):
    """The local workspace server cannot be started, reached or stopped."""


class StoreError(WorkspaceError):
    """The local workspace refuses to write an endpoint file (an unsafe name)."""


class WorkerError(WorkspaceError):
    """A local worker could not serve a request (not a problem with the request)."""


class WorkerNotReadyError(WorkerError):
    """The local worker is loading, failed or stopped."""


class ModelLoadError(WorkspaceError):
    """A registered model version cannot be loaded for serving by the local workspace."""


class InvalidRequestError(PtdeployError, ValueError):
    """A request the local engine refuses (answered with HTTP 400 by the server).

    ``field`` is the path of the offending field (``messages[1].role``) or ``body``;
    ``error_code`` is Databricks': ``BAD_REQUEST`` for an unknown field or a body that
    is not a JSON object, ``INVALID_PARAMETER_VALUE`` for a value out of range.
    """

    def __init__(
        self, field: str, message: str, error_code: str = "INVALID_PARAMETER_VALUE"
    ) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.error_code = error_code

    def __reduce__(self) -> tuple[object, ...]:  # crosses the worker's process boundary
        return (InvalidRequestError, (self.field, self.message, self.error_code))


class WorkspaceApiError(WorkspaceError):
    """A request the local workspace answers with an error, in Databricks' shape.

    ``status`` is the HTTP status, ``error_code`` Databricks' code
    (``INVALID_PARAMETER_VALUE``, ``RESOURCE_DOES_NOT_EXIST``...), ``message`` names the
    field at fault and what would be valid; ``headers`` go with the answer (``Retry-After``).
    """

    def __init__(
        self, status: int, error_code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message
        self.headers = headers


class LabError(PtdeployError):
    """JupyterLab (``ptdeploy lab``) cannot be started or stopped."""


class InputWidgetNotDefined(PtdeployError, LookupError):
    """``dbutils.widgets.get`` of a widget nobody created (the Databricks runtime's name)."""


class TaskValueError(PtdeployError, LookupError):
    """A job task needs a task value an upstream task did not set (tasks run out of order)."""


class JobDefinitionError(PtdeployError, ValueError):
    """A job definition (resources/*.job.yml, databricks.yml) is invalid or cannot be run."""


class SecretNotFoundError(PtdeployError, LookupError):
    """A secret the run needs (a Hugging Face token) is not set: the message names it."""


class AuthError(PtdeployError):
    """The workspace cannot be reached or refused the credentials (profile, token, host)."""


class PromotionError(PtdeployError):
    """A new version failed its deploy or smoke test: traffic stays on the champion."""


class BatchError(PtdeployError):
    """A batch inference run left rows unanswered, or failed rows when told to fail."""


def version_list(versions: Iterable[Any]) -> str:
    """Registered versions (MLflow ``ModelVersion`` objects or numbers) as ``"1, 2, 10"``
    in numeric order, ``"none"`` when empty: the one listing every "no such version"
    message shows (the client's and the local workspace's)."""
    numbers = sorted(
        (str(getattr(v, "version", v)) for v in versions),
        key=lambda n: int(n) if n.isdigit() else 0,
    )
    return ", ".join(numbers) or "none"
