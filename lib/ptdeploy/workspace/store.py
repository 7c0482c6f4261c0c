"""Endpoint state of the local workspace, on disk: one JSON file per serving endpoint.

Why files and not memory: the local workspace stands in for Databricks, where an
endpoint outlives any client; stopping and starting the server (or a crash) must lose
no endpoint. Why one file per endpoint: a write touches only its own endpoint, and a
damaged file costs one endpoint, not all of them. Every write goes to a temporary file
in the same directory, is flushed to disk and then renamed over the old file
(``os.replace`` is atomic on POSIX), so a reader or a crash never sees half a record.

What is stored is the *declared* state: configurations, tags, AI gateway, and the
update status. Worker states (loading, ready) are not stored: they belong to processes
that do not survive a restart, and the server recomputes them from its workers.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ptdeploy.errors import StoreError
from ptdeploy.limits import ENDPOINT_NAME_PATTERN
from ptdeploy.state import write_atomic

log = logging.getLogger(__name__)

# config_update values (databricks.sdk.service.serving.EndpointStateConfigUpdate)
NOT_UPDATING = "NOT_UPDATING"
IN_PROGRESS = "IN_PROGRESS"
UPDATE_FAILED = "UPDATE_FAILED"
UPDATE_CANCELED = "UPDATE_CANCELED"

# Endpoint names as Databricks accepts them; the store relies on this to use the name as
# a file name safely (no '/', no '..').
ENDPOINT_NAME = ENDPOINT_NAME_PATTERN  # ptdeploy.limits: the one home of the name rule


@dataclass
class ServedEntity:
    """One served entity of a configuration, as requested and validated."""

    name: str
    entity_name: str
    entity_version: str
    task: str
    min_provisioned_throughput: int | None = None
    max_provisioned_throughput: int | None = None
    # model units instead of tokens/s, for the models get-model-optimization-info answers
    # a model_unit_chunk_size for
    provisioned_model_units: int | None = None
    scale_to_zero_enabled: bool = False
    workload_size: str | None = None
    workload_type: str | None = None
    environment_vars: dict[str, str] | None = None
    creator: str = ""
    creation_timestamp: int = 0
    # Set when the deployment of this entity failed: kept so the failure stays visible
    # after the worker that failed is gone (and after a restart).
    failed_message: str | None = None

    def same_deployment(self, other: ServedEntity) -> bool:
        """True when ``other`` can be served by the same worker (same model, same name)."""
        return (self.name, self.entity_name, self.entity_version) == (
            other.name,
            other.entity_name,
            other.entity_version,
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ServedEntity:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass
class Route:
    served_entity_name: str
    traffic_percentage: int

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Route:
        return cls(str(d["served_entity_name"]), int(d["traffic_percentage"]))


@dataclass
class EndpointConfig:
    served_entities: list[ServedEntity]
    routes: list[Route]
    config_version: int
    start_time: int = 0

    def entity(self, name: str) -> ServedEntity | None:
        return next((e for e in self.served_entities if e.name == name), None)

    @property
    def task(self) -> str | None:
        return self.served_entities[0].task if self.served_entities else None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EndpointConfig:
        return cls(
            served_entities=[ServedEntity.from_dict(e) for e in d.get("served_entities", [])],
            routes=[Route.from_dict(r) for r in d.get("routes", [])],
            config_version=int(d.get("config_version", 1)),
            start_time=int(d.get("start_time", 0)),
        )


@dataclass
class EndpointRecord:
    """Everything the server must remember about one serving endpoint."""

    name: str
    id: str
    creator: str
    creation_timestamp: int
    last_updated_timestamp: int
    # The configuration being served; None until the first configuration became ready.
    config: EndpointConfig | None = None
    # The configuration being deployed (IN_PROGRESS) or the one that failed (UPDATE_FAILED).
    pending_config: EndpointConfig | None = None
    config_update: str = NOT_UPDATING
    tags: list[dict[str, str]] = field(default_factory=list)
    ai_gateway: dict[str, Any] | None = None
    rate_limits: list[dict[str, Any]] | None = None
    description: str | None = None
    route_optimized: bool = False

    @property
    def task(self) -> str | None:
        cfg = self.config or self.pending_config
        return cfg.task if cfg else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EndpointRecord:
        data = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for key in ("config", "pending_config"):
            if data.get(key) is not None:
                data[key] = EndpointConfig.from_dict(data[key])
        return cls(**data)


class EndpointStore:
    """Endpoint records as ``<root>/<endpoint name>.json``, written atomically."""

    SUFFIX = ".json"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, name: str) -> Path:
        if not ENDPOINT_NAME.fullmatch(name):
            # Callers validate names first; this guards the file system, not the user.
            raise StoreError(f"refusing to store endpoint with unsafe name {name!r}")
        return self.root / f"{name}{self.SUFFIX}"

    def load_all(self) -> list[EndpointRecord]:
        """Every stored endpoint; an unreadable file is logged and skipped, not fatal."""
        records = []
        for path in sorted(self.root.glob(f"*{self.SUFFIX}")):
            try:
                records.append(EndpointRecord.from_dict(json.loads(path.read_text())))
            except (OSError, ValueError, TypeError, KeyError) as exc:
                log.error("skipping unreadable endpoint file %s: %s", path, exc)
        return records

    def get(self, name: str) -> EndpointRecord | None:
        path = self._path(name)
        if not path.is_file():
            return None
        return EndpointRecord.from_dict(json.loads(path.read_text()))

    def put(self, record: EndpointRecord) -> None:
        """Write ``record`` atomically: the old file or the new one, never a mix."""
        path = self._path(record.name)
        data = json.dumps(record.to_dict(), indent=1, sort_keys=True)
        try:
            write_atomic(path, data)
        except OSError as exc:
            raise StoreError(f"cannot write endpoint file {path}: {exc}") from exc

    def delete(self, name: str) -> bool:
        try:
            self._path(name).unlink()
            return True
        except FileNotFoundError:
            return False
