"""Find and delete the serving endpoints ptdeploy created, locally or on a workspace.

A provisioned-throughput endpoint is billed for the capacity it holds whether or not
anyone queries it, and ``databricks bundle destroy`` removes the jobs but leaves the
endpoints they created. So every endpoint ``ptdeploy.serving.endpoints.create_or_update``
creates carries the tag ``MANAGED_TAG`` (tags also reach ``system.billing.usage``, so
the cost of ptdeploy's endpoints can be told apart), and this module lists exactly
those — never an endpoint someone else created — and deletes them on request.

``ptdeploy cleanup`` is a dry run unless ``--delete`` is given, and asks before deleting
unless ``--yes``; a filter that matches no ptdeploy endpoint is an error, not a silent
no-op. Deleting a serving endpoint does not touch the registered model versions.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ptdeploy.errors import CleanupError

if TYPE_CHECKING:
    from databricks.sdk import WorkspaceClient

# The tag ptdeploy puts on the endpoints it creates (key, value).
MANAGED_TAG = ("created_by", "ptdeploy")


@dataclass(frozen=True)
class ManagedEndpoint:
    """An endpoint ptdeploy created: its name, what it serves, its state."""

    name: str
    entities: tuple[str, ...]  # "name version" of each served entity
    state: str
    creator: str | None

    def describe(self) -> str:
        served = ", ".join(self.entities) or "no served entity"
        return f"{self.name} ({served}; {self.state})"


def is_managed(tags: Iterable[object] | None) -> bool:
    key, value = MANAGED_TAG
    return any(
        getattr(t, "key", None) == key and getattr(t, "value", None) == value for t in tags or []
    )


def managed_endpoints(w: WorkspaceClient, match: str | None = None) -> list[ManagedEndpoint]:
    """The endpoints ptdeploy created on this workspace, whose names match ``match``
    (a shell pattern such as ``llama-*``; all of them when None), sorted by name."""
    found = []
    for ep in w.serving_endpoints.list():
        if not is_managed(ep.tags) or (
            match is not None and not fnmatch.fnmatchcase(ep.name or "", match)
        ):
            continue
        config = ep.config
        entities = tuple(
            f"{e.entity_name} {e.entity_version}"
            for e in ((config.served_entities if config else None) or [])
        )
        state = ep.state
        ready = state.ready.value if state and state.ready else "UNKNOWN"
        updating = state.config_update.value if state and state.config_update else "UNKNOWN"
        found.append(ManagedEndpoint(ep.name or "", entities, f"{ready}/{updating}", ep.creator))
    return sorted(found, key=lambda e: e.name)


def delete_endpoints(
    w: WorkspaceClient,
    endpoints: Iterable[ManagedEndpoint],
    on_deleted: Callable[[ManagedEndpoint], None] | None = None,
) -> list[ManagedEndpoint]:
    """Delete each endpoint (one call each); the ones deleted, in order.

    An endpoint already gone (deleted meanwhile) counts as deleted; any other failure
    stops and says which endpoints were deleted before it.
    """
    from databricks.sdk.errors import NotFound

    done: list[ManagedEndpoint] = []
    for ep in endpoints:
        try:
            w.serving_endpoints.delete(ep.name)
        except NotFound:
            pass
        except Exception as exc:
            deleted = ", ".join(d.name for d in done) or "none"
            raise CleanupError(
                f"deleting serving endpoint {ep.name!r} failed: {exc}. Deleted before it: "
                f"{deleted}. Fix the cause (permissions?) and run the cleanup again."
            ) from exc
        done.append(ep)
        if on_deleted is not None:
            on_deleted(ep)
    return done
