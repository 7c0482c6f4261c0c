"""The endpoint manager: endpoints, their workers and their states (the state machine).

States follow Databricks: a create answers ``NOT_READY`` / ``IN_PROGRESS`` with a
``pending_config``; when every worker of the pending config is loaded the config becomes
``config`` and the endpoint ``READY`` / ``NOT_UPDATING``. An update keeps the old config
serving until the new workers are ready; a worker that fails to load turns the update
into ``UPDATE_FAILED`` (with the worker's error as ``deployment_state_message``) and the
old config keeps serving. A worker of the serving config that dies is restarted with
backoff, up to a cap (``HealingPolicy``). Every mutation is persisted before it is
visible.
"""

from __future__ import annotations

import getpass
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from ptdeploy import limits
from ptdeploy.errors import WorkspaceApiError, not_valid
from ptdeploy.llm_tasks import TASK_COMPLETIONS
from ptdeploy.workspace import render
from ptdeploy.workspace import store as st
from ptdeploy.workspace.protocol import invalid, not_found, unavailable
from ptdeploy.workspace.tables import GatewayTables
from ptdeploy.workspace.validation import (
    Catalog,
    endpoint_name_field,
    parse_ai_gateway,
    parse_rate_limits,
    parse_routes,
    parse_served_entities,
    parse_tags,
)

log = logging.getLogger("ptdeploy.workspace.server")


class Worker(Protocol):
    """One inference worker process (``ptdeploy.workspace.worker.EntityWorker``)."""

    @property
    def state(self) -> str: ...  # LOADING | READY | FAILED | STOPPED

    @property
    def error(self) -> str | None: ...

    @property
    def task(self) -> str | None: ...

    def start(self) -> None: ...

    async def infer(self, body: dict[str, Any]) -> dict[str, Any]: ...

    def stream(self, body: dict[str, Any]) -> AsyncIterator[tuple[int, str] | dict[str, Any]]:
        """``stream=true``: (choice, text delta) items, then the whole response."""
        ...

    def stop(self) -> None: ...


WorkerFactory = Callable[[st.ServedEntity], Worker]

CREATING_MESSAGE = "Creating resources for served entity."
SCALED_TO_ZERO_MESSAGE = (
    "Scaled to zero after an idle period; the next request loads it again (cold start)."
)
SCALING_UP_MESSAGE = "Scaling up from zero: loading the served entity for a waiting request."
RECOVERING_MESSAGE = "Loading the served entity again after a restart of the local workspace."


# ------------------------------------------------------------------- healing


@dataclass(frozen=True)
class HealingPolicy:
    """How the workspace restarts a worker of a serving config that died.

    The n-th restart waits ``backoff_s * 2**(n-1)`` seconds (at most ``max_backoff_s``)
    after the death it answers; after ``max_restarts`` restarts the next death is final:
    the served entity shows ``DEPLOYMENT_FAILED`` and nothing restarts it until its config
    is updated. A worker that stays ``READY`` for ``healthy_after_s`` has its count reset.
    """

    max_restarts: int = 5
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    healthy_after_s: float = 300.0

    def delay(self, restart: int) -> float:
        return min(self.max_backoff_s, self.backoff_s * 2 ** max(restart - 1, 0))


@dataclass
class _Healing:
    """The restarts of one served entity's worker (in memory: a server restart starts
    every worker anew)."""

    restarts: int = 0
    reason: str = ""
    next_at: float = 0.0
    dead_worker: int | None = None  # id() of the dead worker this record answers
    ready_since: float | None = None
    gave_up: bool = False

    def progress(self, policy: HealingPolicy) -> str:
        return (
            f"{self.reason}; the local workspace is restarting it (restart "
            f"{max(self.restarts, 1)} of at most {policy.max_restarts})."
        )

    def failure(self, entity: str) -> str:
        return (
            f"The worker of served entity '{entity}' died again after {self.restarts} "
            f"restart(s); the local workspace stopped restarting it. Last failure: "
            f"{self.reason}. Update the endpoint's config to deploy it again."
        )


# ------------------------------------------------------------------- routing


class TrafficSplitter:
    """Smooth weighted round-robin over routes (nginx's): deterministic, and over any
    100 consecutive requests each served entity gets exactly its traffic percentage."""

    def __init__(self, routes: Iterable[st.Route]) -> None:
        self.weights = {
            r.served_entity_name: r.traffic_percentage for r in routes if r.traffic_percentage > 0
        }
        self.current = dict.fromkeys(self.weights, 0)

    def next(self, available: set[str]) -> str | None:
        candidates = {k: w for k, w in self.weights.items() if k in available}
        if not candidates:
            return None
        total = sum(candidates.values())
        for k, w in candidates.items():
            self.current[k] += w
        best = max(candidates, key=lambda k: self.current[k])
        self.current[best] -= total
        return best


# ------------------------------------------------------------------- manager


class EndpointManager:
    """Endpoints, their workers and their states; every mutation is persisted."""

    def __init__(
        self,
        store: st.EndpointStore,
        catalog: Catalog,
        worker_factory: WorkerFactory,
        *,
        clock: Callable[[], float] = time.time,
        creator: str | None = None,
        healing: HealingPolicy | None = None,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.worker_factory = worker_factory
        self.clock = clock
        self.creator = creator or f"{getpass.getuser()}@localhost"
        self.lock = threading.RLock()
        self.records: dict[str, st.EndpointRecord] = {}
        self.active: dict[str, dict[str, Worker]] = {}
        self.pending: dict[str, dict[str, Worker]] = {}
        self.recovering: set[str] = set()
        self.splitters: dict[str, TrafficSplitter] = {}
        self.calls: dict[str, deque[float]] = {}
        self.healing_policy = healing or HealingPolicy()
        self.healing: dict[tuple[str, str], _Healing] = {}
        self.tables = GatewayTables(store.root.parent)
        # scale to zero: last request per endpoint, entities unloaded, entities waking up
        self.last_used: dict[str, float] = {}
        self.scaled_to_zero: dict[str, set[str]] = {}
        self.waking: dict[str, set[str]] = {}
        self.in_flight: dict[str, int] = {}

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # ---- lifecycle

    def resume(self) -> None:
        """Load persisted endpoints and start their workers again (NOT_READY -> READY)."""
        with self.lock:
            for rec in self.store.load_all():
                self.records[rec.name] = rec
                try:
                    if rec.config is not None:
                        self.active[rec.name] = self._start_workers(rec.config.served_entities)
                        self.recovering.add(rec.name)
                        self.splitters[rec.name] = TrafficSplitter(rec.config.routes)
                    if rec.pending_config is not None and rec.config_update == st.IN_PROGRESS:
                        self.pending[rec.name] = self._start_workers(
                            rec.pending_config.served_entities, reuse=self._reuse(rec)
                        )
                except Exception:  # one endpoint that cannot start must not stop the rest
                    log.exception("endpoint %s: cannot start its workers again", rec.name)
                    continue
                log.info("resumed endpoint %s (%s)", rec.name, rec.config_update)

    def shutdown(self) -> None:
        with self.lock:
            workers = self._all_workers()
            self.active.clear()
            self.pending.clear()
        stop_all(workers)

    def _all_workers(self) -> list[Worker]:
        seen: dict[int, Worker] = {}
        for group in (*self.active.values(), *self.pending.values()):
            for w in group.values():
                seen[id(w)] = w
        return list(seen.values())

    def _start_workers(
        self,
        entities: list[st.ServedEntity],
        reuse: tuple[st.EndpointConfig, dict[str, Worker]] | None = None,
    ) -> dict[str, Worker]:
        """One worker per entity; a live worker of ``reuse`` serving the same model under
        the same name is kept (a throughput or traffic change needs no reload)."""
        workers: dict[str, Worker] = {}
        for e in entities:
            if reuse is not None:
                old_config, old_workers = reuse
                old = old_config.entity(e.name)
                current = old_workers.get(e.name)
                if (
                    old is not None
                    and current is not None
                    and old.same_deployment(e)
                    and current.state in ("LOADING", "READY")
                ):
                    workers[e.name] = current
                    continue
            try:
                worker = self.worker_factory(e)
                worker.start()
            except BaseException:
                reused = {id(w) for w in (reuse[1].values() if reuse else ())}
                stop_all(w for w in workers.values() if id(w) not in reused)
                raise
            workers[e.name] = worker
        return workers

    def _reuse(self, rec: st.EndpointRecord) -> tuple[st.EndpointConfig, dict[str, Worker]] | None:
        if rec.config is None or rec.name not in self.active:
            return None
        return rec.config, self.active[rec.name]

    # ---- API operations (sync: called from a thread pool)

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        name = endpoint_name_field(body.get("name"))
        now = self.now_ms()
        config = body.get("config")
        if config is None:
            raise invalid(
                "config is required: {'served_entities': [{'entity_name': ..., "
                "'entity_version': ..., 'min_provisioned_throughput': ..., "
                "'max_provisioned_throughput': ...}]}."
            )
        if not isinstance(config, dict):
            raise invalid(not_valid("config", config, "an object"))
        with self.lock:
            if name in self.records:
                raise WorkspaceApiError(
                    409, "RESOURCE_ALREADY_EXISTS", f"Endpoint with name '{name}' already exists."
                )
        pending = self._parse_config(config, "config", config_version=1, now=now)
        tags = parse_tags(body.get("tags"), "tags")
        gateway = (
            parse_ai_gateway(body["ai_gateway"]) if body.get("ai_gateway") is not None else None
        )
        self._check_inference_table_catalog(gateway, "ai_gateway")
        rate_limits = (
            parse_rate_limits(body.get("rate_limits"), "rate_limits", gateway=False) or None
        )
        description = body.get("description")
        if description is not None and not isinstance(description, str):
            raise invalid(not_valid("description", description, "a string"))
        rec = st.EndpointRecord(
            name=name,
            id=uuid.uuid4().hex,
            creator=self.creator,
            creation_timestamp=now,
            last_updated_timestamp=now,
            pending_config=pending,
            config_update=st.IN_PROGRESS,
            tags=tags,
            ai_gateway=gateway,
            rate_limits=rate_limits,
            description=description,
            route_optimized=bool(body.get("route_optimized") or False),
        )
        with self.lock:
            if name in self.records:  # created concurrently while validating
                raise WorkspaceApiError(
                    409, "RESOURCE_ALREADY_EXISTS", f"Endpoint with name '{name}' already exists."
                )
            workers = self._start_workers(pending.served_entities)
            self._persist_or_stop(rec, workers, keep=())
            self.records[name] = rec
            self.pending[name] = workers
            log.info("created endpoint %s (config version 1)", name)
            return self.render(rec)

    def _parse_config(
        self,
        config: dict[str, Any],
        field: str,
        *,
        config_version: int,
        now: int,
        current: st.EndpointConfig | None = None,
    ) -> st.EndpointConfig:
        if config.get("auto_capture_config") is not None:
            log.info("auto_capture_config (legacy inference tables) is ignored locally")
        raw_entities = config.get("served_entities")
        key = "served_entities"
        if raw_entities is None and config.get("served_models") is not None:
            raw_entities, key = config["served_models"], "served_models"
        prefix = f"{field}." if field else ""
        if raw_entities is None and current is not None:
            entities = [replace(e, failed_message=None) for e in current.served_entities]
        else:
            entities = parse_served_entities(
                raw_entities,
                field=f"{prefix}{key}",
                catalog=self.catalog,
                creator=self.creator,
                now_ms=now,
            )
        routes = parse_routes(config.get("traffic_config"), entities, f"{prefix}traffic_config")
        return st.EndpointConfig(entities, routes, config_version=config_version, start_time=now)

    def get(self, name: str) -> tuple[dict[str, Any], list[Worker]]:
        """The endpoint as it is now, and the workers that became superfluous (to stop).

        The endpoint is reconciled first, so what a client reads is current rather than
        one background tick old: Databricks derives ``state.ready`` from the served
        entities' current states ("An endpoint is READY if all of the served entities in
        its active configuration are ready", EndpointState in
        https://docs.databricks.com/api/workspace/servingendpoints/get).
        """
        with self.lock:
            self._record(name)  # 404 first
            to_stop = self.reconcile([name])
            return self.render(self._record(name)), to_stop

    def list(self) -> dict[str, Any]:
        with self.lock:
            return render.endpoint_list([self.render_summary(r) for r in self.records.values()])

    def delete(self, name: str) -> dict[str, Any]:
        with self.lock:
            self._record(name)
            del self.records[name]
            workers = {
                id(w): w
                for g in (self.active.pop(name, {}), self.pending.pop(name, {}))
                for w in g.values()
            }
            self.splitters.pop(name, None)
            self.recovering.discard(name)
            self.calls.pop(name, None)
            self._forget_scale_to_zero(name)
            self._forget_healing(name)
            self.store.delete(name)
            log.info("deleted endpoint %s", name)
        stop_all(workers.values())
        return {}

    def update_config(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        now = self.now_ms()
        with self.lock:
            rec = self._record(name)
            self._check_not_updating(rec)
            current = rec.config or rec.pending_config
            version = max(c.config_version for c in (rec.config, rec.pending_config) if c) + 1
        if (
            body.get("served_entities") is None
            and body.get("served_models") is None
            and body.get("traffic_config") is None
        ):
            raise invalid(
                "served_entities is required (or traffic_config to change only the routes of "
                "the current served entities)."
            )
        pending = self._parse_config(body, "", config_version=version, now=now, current=current)
        with self.lock:
            rec = self._record(name)
            self._check_not_updating(rec)  # another update may have won the race
            new = replace(
                rec,
                pending_config=pending,
                config_update=st.IN_PROGRESS,
                last_updated_timestamp=now,
            )
            workers = self._start_workers(pending.served_entities, reuse=self._reuse(rec))
            self._persist_or_stop(new, workers, keep=self.active.get(name, {}).values())
            self.records[name] = new
            self.pending[name] = workers
            log.info("updating endpoint %s to config version %d", name, version)
            return self.render(new)

    def _persist_or_stop(
        self, rec: st.EndpointRecord, workers: dict[str, Worker], keep: Iterable[Worker]
    ) -> None:
        """Write ``rec``; if that fails, stop the workers just started for it (the ones in
        ``keep`` serve the current config) so a failed call leaves nothing behind."""
        try:
            self.store.put(rec)
        except BaseException:
            kept = {id(w) for w in keep}
            stop_all(w for w in workers.values() if id(w) not in kept)
            raise

    def _check_not_updating(self, rec: st.EndpointRecord) -> None:
        if rec.config_update == st.IN_PROGRESS:
            raise WorkspaceApiError(
                409,
                "RESOURCE_CONFLICT",
                f"Endpoint '{rec.name}' has a config update in progress (config version "
                f"{rec.pending_config.config_version if rec.pending_config else '?'}); wait until "
                "state.config_update is no longer IN_PROGRESS, then update it again.",
            )

    def put_ai_gateway(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        gateway = parse_ai_gateway(body, "ai_gateway")
        self._check_inference_table_catalog(gateway, "")
        with self.lock:
            rec = self._record(name)
            new = replace(rec, ai_gateway=gateway or None, last_updated_timestamp=self.now_ms())
            self.store.put(new)
            self.records[name] = new
        return render.ai_gateway(gateway)

    def _check_inference_table_catalog(self, gateway: dict[str, Any] | None, field: str) -> None:
        """An enabled inference table needs an existing catalog (400, as an invalid value)."""
        cfg = (gateway or {}).get("inference_table_config") or {}
        exists = getattr(self.catalog, "catalog_exists", None)
        name = cfg.get("catalog_name")
        if exists is None or not cfg.get("enabled", True) or not name:
            return
        if not exists(name):
            prefix = f"{field}." if field else ""
            raise invalid(
                f"{prefix}inference_table_config.catalog_name={name!r}: Catalog '{name}' does "
                "not exist. Use an existing catalog (locally 'main', or the catalog of a "
                "registered model)."
            )

    def records_requests(self, name: str) -> bool:
        """Whether the endpoint's AI Gateway records requests (usage tracking or inference
        tables): without one, ``record_request`` has nothing to do."""
        with self.lock:
            rec = self.records.get(name)
            return bool(rec is not None and rec.ai_gateway)

    def record_request(
        self,
        name: str,
        served: str | None,
        request: dict[str, Any],
        response: dict[str, Any] | None,
        status_code: int,
        started: float,
        duration_ms: int,
        streaming: bool,
    ) -> None:
        """Usage tracking and inference table rows of one answered request (AI Gateway)."""
        with self.lock:
            rec = self.records.get(name)
            gateway = rec.ai_gateway if rec is not None else None
        if not gateway:
            return
        self.tables.record(
            endpoint=name,
            gateway=gateway,
            served_entity=served,
            request=request,
            response=response,
            status_code=status_code,
            request_time=started,
            duration_ms=duration_ms,
            requester=self.creator,
            streaming=streaming,
        )

    def patch_tags(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        add = parse_tags(body.get("add_tags"), "add_tags")
        delete = body.get("delete_tags", body.get("delete_keys"))
        if delete is not None and (
            not isinstance(delete, list) or not all(isinstance(k, str) for k in delete)
        ):
            raise invalid(not_valid("delete_tags", delete, "a list of tag keys"))
        with self.lock:
            rec = self._record(name)
            tags = {t["key"]: t for t in rec.tags}
            for key in delete or []:
                tags.pop(key, None)
            for t in add:
                tags[t["key"]] = t
            if len(tags) > limits.MAX_TAGS:
                raise invalid(
                    f"add_tags would give endpoint '{name}' {len(tags)} tags; an endpoint has at "
                    f"most {limits.MAX_TAGS} (delete_tags some first)."
                )
            new = replace(rec, tags=list(tags.values()), last_updated_timestamp=self.now_ms())
            self.store.put(new)
            self.records[name] = new
            return render.tags(new)

    def put_rate_limits(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        limits = parse_rate_limits(body.get("rate_limits"), "rate_limits", gateway=False)
        with self.lock:
            rec = self._record(name)
            new = replace(rec, rate_limits=limits or None, last_updated_timestamp=self.now_ms())
            self.store.put(new)
            self.records[name] = new
        return {"rate_limits": limits}

    def _record(self, name: str) -> st.EndpointRecord:
        rec = self.records.get(name)
        if rec is None:
            raise not_found(name)
        return rec

    # ---- state machine

    def reconcile(self, names: Iterable[str] | None = None) -> list[Worker]:
        """Advance updates whose workers finished loading, heal dead workers, scale idle
        ones to zero (of every endpoint, or of ``names``); return the workers to stop."""
        to_stop: list[Worker] = []
        with self.lock:
            wanted = None if names is None else set(names)
            for name, rec in list(self.records.items()):
                if wanted is not None and name not in wanted:
                    continue
                if rec.config is not None and name in self.recovering:
                    workers = self.active.get(name, {})
                    if all(w.state != "LOADING" for w in workers.values()):
                        self.recovering.discard(name)
                if rec.config is not None:
                    self._heal(rec, to_stop)
                    self._scale_to_zero(rec, to_stop)
                if rec.config_update != st.IN_PROGRESS or rec.pending_config is None:
                    continue
                workers = self.pending.get(name, {})
                entities = rec.pending_config.served_entities
                failed = [
                    (e, workers.get(e.name)) for e in entities if _failed(workers.get(e.name))
                ]
                if failed:
                    self._fail_update(rec, failed, to_stop)
                elif all(
                    workers.get(e.name) is not None and workers[e.name].state == "READY"
                    for e in entities
                ):
                    self._swap(rec, to_stop)
        return to_stop

    def _heal(self, rec: st.EndpointRecord, to_stop: list[Worker]) -> None:
        """Restart the dead workers of ``rec``'s serving config, with backoff and a cap."""
        assert rec.config is not None
        policy, now = self.healing_policy, self.clock()
        workers = self.active.get(rec.name, {})
        for e in rec.config.served_entities:
            key, worker = (rec.name, e.name), workers.get(e.name)
            h = self.healing.get(key)
            if worker is None:
                continue
            if worker.state == "READY":
                if h is not None and not h.gave_up:
                    if h.ready_since is None:
                        h.ready_since = now
                        log.info("endpoint %s: served entity %s serves again", *key)
                    elif now - h.ready_since >= policy.healthy_after_s:
                        del self.healing[key]
                continue
            if worker.state != "FAILED":
                continue  # LOADING (a restart under way) or STOPPED (by us)
            if h is None:
                h = self.healing[key] = _Healing()
            if h.gave_up:
                continue
            if h.dead_worker != id(worker):  # a new death
                h.dead_worker, h.ready_since = id(worker), None
                h.reason = worker.error or "the worker process died"
                if h.restarts >= policy.max_restarts:
                    h.gave_up = True
                    log.error("endpoint %s: %s", rec.name, h.failure(e.name))
                    continue
                h.next_at = now + policy.delay(h.restarts + 1)
                log.warning("endpoint %s: served entity %s: %s", rec.name, e.name, h.reason)
            if now < h.next_at:
                continue
            h.restarts += 1
            try:
                new = self.worker_factory(e)
                new.start()
            except Exception as exc:  # counted as a restart; the next one waits longer
                log.exception("endpoint %s: restarting served entity %s failed", *key)
                h.reason = f"restarting the worker failed: {exc}"
                h.next_at = now + policy.delay(h.restarts + 1)
                continue
            log.info(
                "endpoint %s: restarting served entity %s (restart %d of at most %d)",
                rec.name,
                e.name,
                h.restarts,
                policy.max_restarts,
            )
            workers[e.name] = new
            to_stop.append(worker)

    def _fail_update(
        self,
        rec: st.EndpointRecord,
        failed: list[tuple[st.ServedEntity, Worker | None]],
        to_stop: list[Worker],
    ) -> None:
        assert rec.pending_config is not None
        messages = {
            e.name: (w.error if w is not None else None) or "the worker stopped while loading"
            for e, w in failed
        }
        entities = [
            replace(e, failed_message=messages[e.name]) if e.name in messages else e
            for e in rec.pending_config.served_entities
        ]
        new = replace(
            rec,
            pending_config=replace(rec.pending_config, served_entities=entities),
            config_update=st.UPDATE_FAILED,
        )
        self.store.put(new)  # first: if it fails, nothing below changed (retried next round)
        active_ids = {id(w) for w in self.active.get(rec.name, {}).values()}
        to_stop.extend(
            w for w in self.pending.pop(rec.name, {}).values() if id(w) not in active_ids
        )
        self.records[rec.name] = new
        log.warning(
            "endpoint %s: config version %d failed: %s",
            rec.name,
            rec.pending_config.config_version,
            messages,
        )

    def _swap(self, rec: st.EndpointRecord, to_stop: list[Worker]) -> None:
        new = replace(
            rec, config=rec.pending_config, pending_config=None, config_update=st.NOT_UPDATING
        )
        self.store.put(new)  # first: if it fails, nothing below changed (retried next round)
        new_workers = self.pending.pop(rec.name, {})
        new_ids = {id(w) for w in new_workers.values()}
        to_stop.extend(w for w in self.active.get(rec.name, {}).values() if id(w) not in new_ids)
        self.active[rec.name] = new_workers
        self.records[rec.name] = new
        self.splitters[rec.name] = TrafficSplitter(new.config.routes if new.config else [])
        self.recovering.discard(rec.name)
        self._forget_healing(rec.name)
        self._forget_scale_to_zero(rec.name)
        log.info(
            "endpoint %s: config version %d is READY",
            rec.name,
            new.config.config_version if new.config else 0,
        )

    # ---- scale to zero

    def _scale_to_zero(self, rec: st.EndpointRecord, to_stop: list[Worker]) -> None:
        """Unload the READY workers of scale-to-zero entities idle for
        ``limits.scale_to_zero_idle_seconds()`` (the next request loads them again)."""
        assert rec.config is not None
        entities = [e for e in rec.config.served_entities if e.scale_to_zero_enabled]
        workers = self.active.get(rec.name, {})
        waking = self.waking.get(rec.name, set())
        for n in list(waking):
            if workers.get(n) is None or workers[n].state != "LOADING":
                waking.discard(n)  # loaded (or failed: healing takes over)
        if not entities or rec.config_update == st.IN_PROGRESS or self.in_flight.get(rec.name):
            return
        now = self.clock()
        last = self.last_used.setdefault(rec.name, now)
        if now - last < limits.scale_to_zero_idle_seconds():
            return
        for e in entities:
            worker = workers.get(e.name)
            if worker is not None and worker.state == "READY":
                to_stop.append(workers.pop(e.name))
                self.scaled_to_zero.setdefault(rec.name, set()).add(e.name)
                log.info("endpoint %s: served entity %s scaled to zero (idle)", rec.name, e.name)

    def asleep(self, name: str) -> bool:
        """Whether a request to ``name`` must wake it (``wake``): entities scaled to zero or
        still loading from zero. The common answer, False, spares a request the thread hop
        ``wake`` takes (it may start worker processes)."""
        with self.lock:
            return bool(self.scaled_to_zero.get(name) or self.waking.get(name))

    def wake(self, name: str) -> list[Worker]:
        """A request arrived: note it, and load the entities scaled to zero again. Returns
        the workers loading for a scale from zero, which the request waits for."""
        with self.lock:
            rec = self.records.get(name)
            if rec is None or rec.config is None:
                return []
            cold = self.scaled_to_zero.pop(name, set())
            workers = self.active.setdefault(name, {})
            waking = self.waking.setdefault(name, set())
            for e in rec.config.served_entities:
                if e.name in cold:
                    worker = self.worker_factory(e)
                    worker.start()
                    workers[e.name] = worker
                    waking.add(e.name)
                    log.info("endpoint %s: scaling served entity %s up from zero", name, e.name)
            return [workers[n] for n in waking if n in workers and workers[n].state == "LOADING"]

    def begin(self, name: str) -> None:
        """A request to ``name`` started: no scale to zero while it is in flight."""
        with self.lock:
            self.in_flight[name] = self.in_flight.get(name, 0) + 1
            self.last_used[name] = self.clock()

    def end(self, name: str) -> None:
        """A request ended (answered, refused or dropped): the idle period counts from now."""
        with self.lock:
            left = self.in_flight.get(name, 0) - 1
            if left > 0:
                self.in_flight[name] = left
            else:
                self.in_flight.pop(name, None)
            if name in self.records:
                self.last_used[name] = self.clock()

    def _forget_scale_to_zero(self, name: str) -> None:
        for table in (self.last_used, self.scaled_to_zero, self.waking):
            table.pop(name, None)

    def _forget_healing(self, name: str) -> None:
        for key in [k for k in self.healing if k[0] == name]:
            del self.healing[key]

    def ready(self, rec: st.EndpointRecord) -> bool:
        if rec.config is None:
            return False
        workers = self.active.get(rec.name, {})
        # an entity scaled to zero (or scaling up from it) still counts as ready, as on
        # Databricks: the endpoint stays READY and the next request waits for a cold start
        idle = self.scaled_to_zero.get(rec.name, set()) | self.waking.get(rec.name, set())
        return all(
            e.name in idle or (workers.get(e.name) is not None and workers[e.name].state == "READY")
            for e in rec.config.served_entities
        )

    # ---- rendering (ServingEndpointDetailed / ServingEndpoint)

    def _entity_state(
        self, rec: st.EndpointRecord, cfg: st.EndpointConfig, entity: st.ServedEntity, active: bool
    ) -> Any:
        worker = (self.active if active else self.pending).get(rec.name, {}).get(entity.name)
        if entity.failed_message is not None:
            return render.served_model_state("DEPLOYMENT_FAILED", entity.failed_message)
        if active and entity.name in self.scaled_to_zero.get(rec.name, ()):
            return render.served_model_state("DEPLOYMENT_READY", SCALED_TO_ZERO_MESSAGE)
        if worker is None:
            return render.served_model_state(
                "DEPLOYMENT_ABORTED", "The served entity is not deployed."
            )
        if active and worker.state == "LOADING" and entity.name in self.waking.get(rec.name, ()):
            return render.served_model_state("DEPLOYMENT_READY", SCALING_UP_MESSAGE)
        healing = self.healing.get((rec.name, entity.name)) if active else None
        state = worker.state
        if healing is not None and healing.gave_up:
            return render.served_model_state("DEPLOYMENT_FAILED", healing.failure(entity.name))
        if state == "READY":
            return render.served_model_state("DEPLOYMENT_READY", "")
        if healing is not None and state in ("LOADING", "FAILED"):
            return render.served_model_state(
                "DEPLOYMENT_RECOVERING", healing.progress(self.healing_policy)
            )
        if state == "LOADING":
            if active and rec.name in self.recovering:
                return render.served_model_state("DEPLOYMENT_RECOVERING", RECOVERING_MESSAGE)
            return render.served_model_state("DEPLOYMENT_CREATING", CREATING_MESSAGE)
        if state == "FAILED":
            return render.served_model_state(
                "DEPLOYMENT_FAILED", worker.error or "The worker failed."
            )
        return render.served_model_state("DEPLOYMENT_ABORTED", "The worker was stopped.")

    def render(self, rec: st.EndpointRecord) -> dict[str, Any]:
        return render.endpoint(
            rec,
            ready=self.ready(rec),
            states=lambda cfg, e, active: self._entity_state(rec, cfg, e, active),
        )

    def render_summary(self, rec: st.EndpointRecord) -> dict[str, Any]:
        return render.summary(rec, ready=self.ready(rec))

    # ---- invocations

    def task_of(self, name: str) -> str:
        """The task an endpoint serves (404 if it does not exist)."""
        with self.lock:
            return self._record(name).task or TASK_COMPLETIONS

    def pick(self, name: str) -> tuple[str, Worker]:
        """The served entity (by traffic split) that answers the next request."""
        with self.lock:
            rec = self._record(name)
            if rec.config is None:
                raise unavailable(
                    f"Endpoint '{name}' is not ready: state.ready is NOT_READY and config_update "
                    f"is {rec.config_update}; wait until state.ready is READY before querying it.",
                )
            workers = self.active.get(name, {})
            ready = {n for n, w in workers.items() if w.state == "READY"}
            splitter = self.splitters.setdefault(name, TrafficSplitter(rec.config.routes))
            chosen = splitter.next(ready)
            if chosen is None:
                states = (
                    ", ".join(self._why_not_ready(name, n, w) for n, w in workers.items())
                    or "no worker"
                )
                raise unavailable(
                    f"Endpoint '{name}' has no served entity ready to answer ({states}); wait "
                    "until state.ready is READY.",
                )
            self._check_rate_limit(rec)
            return chosen, workers[chosen]

    def _why_not_ready(self, endpoint: str, entity: str, worker: Worker) -> str:
        h = self.healing.get((endpoint, entity))
        if h is None:
            return f"{entity}: {worker.state}"
        if h.gave_up:
            return f"{entity}: FAILED ({h.failure(entity)})"
        return f"{entity}: RECOVERING ({h.progress(self.healing_policy)})"

    def _check_rate_limit(self, rec: st.EndpointRecord) -> None:
        limits = [
            r["calls"]
            for r in (rec.ai_gateway or {}).get("rate_limits", [])
            if r.get("calls") is not None
        ]
        limits += [r["calls"] for r in rec.rate_limits or [] if r.get("calls") is not None]
        if not limits:
            return
        limit = min(limits)
        now = self.clock()
        window = self.calls.setdefault(rec.name, deque())
        while window and window[0] <= now - 60.0:
            window.popleft()
        if len(window) >= limit:
            raise WorkspaceApiError(
                429,
                "REQUEST_LIMIT_EXCEEDED",
                f"Exceeded the rate limit of endpoint '{rec.name}': {limit} calls per minute "
                "(ai_gateway.rate_limits).",
            )
        window.append(now)


def _failed(worker: Worker | None) -> bool:
    return worker is None or worker.state in ("FAILED", "STOPPED")


def stop_all(workers: Iterable[Worker]) -> None:
    for w in workers:
        try:
            w.stop()
        except Exception:  # a worker that cannot stop cleanly must not block the others
            log.exception("stopping a worker failed")
