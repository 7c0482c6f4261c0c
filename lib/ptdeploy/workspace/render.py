"""Answers of the local workspace, built from databricks-sdk's own dataclasses.

Every endpoint answer is a ``databricks.sdk.service.serving`` object turned into JSON by
its ``as_dict``: a field the pinned SDK does not know cannot be sent, a renamed one fails
here (``TypeError``) rather than in a client, so the shapes cannot drift from the SDK the
notebooks use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from databricks.sdk.service import serving as sv

from ptdeploy.workspace import store as st

# (config, served entity, is the serving config) -> the entity's deployment state
EntityStates = Callable[[st.EndpointConfig, st.ServedEntity, bool], sv.ServedModelState]


def served_model_state(deployment: str, message: str) -> sv.ServedModelState:
    return sv.ServedModelState(
        deployment=sv.ServedModelStateDeployment(deployment), deployment_state_message=message
    )


def _throughput(e: st.ServedEntity) -> dict[str, Any]:
    if e.provisioned_model_units is not None:
        return {"provisioned_model_units": e.provisioned_model_units}
    if e.max_provisioned_throughput is None:
        return {}
    return {
        "min_provisioned_throughput": e.min_provisioned_throughput,
        "max_provisioned_throughput": e.max_provisioned_throughput,
    }


def _entities(
    cfg: st.EndpointConfig, states: EntityStates, active: bool
) -> tuple[list[sv.ServedEntityOutput], list[sv.ServedModelOutput]]:
    entities, models = [], []
    for e in cfg.served_entities:
        common: dict[str, Any] = {
            "name": e.name,
            "scale_to_zero_enabled": e.scale_to_zero_enabled,
            "workload_type": sv.ServingModelWorkloadType(e.workload_type or "CPU")
            if (e.workload_type or "CPU") in sv.ServingModelWorkloadType.__members__
            else None,
            "workload_size": e.workload_size,
            "environment_vars": dict(e.environment_vars) if e.environment_vars else None,
            "state": states(cfg, e, active),
            "creator": e.creator,
            "creation_timestamp": e.creation_timestamp,
        }
        entities.append(
            sv.ServedEntityOutput(
                entity_name=e.entity_name,
                entity_version=e.entity_version,
                **common,
                **_throughput(e),
            )
        )
        models.append(
            sv.ServedModelOutput(
                model_name=e.entity_name,
                model_version=e.entity_version,
                provisioned_model_units=e.provisioned_model_units,
                **common,
            )
        )
    return entities, models


def _traffic(cfg: st.EndpointConfig) -> sv.TrafficConfig:
    return sv.TrafficConfig(
        routes=[
            sv.Route(
                served_model_name=r.served_entity_name,
                served_entity_name=r.served_entity_name,
                traffic_percentage=r.traffic_percentage,
            )
            for r in cfg.routes
        ]
    )


def _state(rec: st.EndpointRecord, ready: bool) -> sv.EndpointState:
    return sv.EndpointState(
        ready=sv.EndpointStateReady.READY if ready else sv.EndpointStateReady.NOT_READY,
        config_update=sv.EndpointStateConfigUpdate(rec.config_update),
    )


def _tags(rec: st.EndpointRecord) -> list[sv.EndpointTag] | None:
    return [sv.EndpointTag.from_dict(t) for t in rec.tags] or None


def _gateway(rec: st.EndpointRecord) -> sv.AiGatewayConfig | None:
    return sv.AiGatewayConfig.from_dict(rec.ai_gateway) if rec.ai_gateway else None


def endpoint(rec: st.EndpointRecord, *, ready: bool, states: EntityStates) -> dict[str, Any]:
    """``ServingEndpointDetailed``: the answer of get, create and update config."""
    config = pending = None
    if rec.config is not None:
        entities, models = _entities(rec.config, states, True)
        config = sv.EndpointCoreConfigOutput(
            served_entities=entities,
            served_models=models,
            traffic_config=_traffic(rec.config),
            config_version=rec.config.config_version,
        )
    if rec.pending_config is not None:
        entities, models = _entities(rec.pending_config, states, False)
        pending = sv.EndpointPendingConfig(
            served_entities=entities,
            served_models=models,
            traffic_config=_traffic(rec.pending_config),
            config_version=rec.pending_config.config_version,
            start_time=rec.pending_config.start_time,
        )
    return sv.ServingEndpointDetailed(
        name=rec.name,
        id=rec.id,
        creator=rec.creator,
        creation_timestamp=rec.creation_timestamp,
        last_updated_timestamp=rec.last_updated_timestamp,
        state=_state(rec, ready),
        permission_level=sv.ServingEndpointDetailedPermissionLevel.CAN_MANAGE,
        route_optimized=rec.route_optimized,
        config=config,
        pending_config=pending,
        task=rec.task or None,
        tags=_tags(rec),
        ai_gateway=_gateway(rec),
        description=rec.description or None,
    ).as_dict()


def summary(rec: st.EndpointRecord, *, ready: bool) -> dict[str, Any]:
    """``ServingEndpoint``: one item of the list answer."""
    cfg = rec.config or rec.pending_config
    config = None
    if cfg is not None:
        config = sv.EndpointCoreConfigSummary(
            served_entities=[
                sv.ServedEntitySpec(
                    name=e.name, entity_name=e.entity_name, entity_version=e.entity_version
                )
                for e in cfg.served_entities
            ],
            served_models=[
                sv.ServedModelSpec(
                    name=e.name, model_name=e.entity_name, model_version=e.entity_version
                )
                for e in cfg.served_entities
            ],
        )
    return sv.ServingEndpoint(
        name=rec.name,
        id=rec.id,
        creator=rec.creator,
        creation_timestamp=rec.creation_timestamp,
        last_updated_timestamp=rec.last_updated_timestamp,
        state=_state(rec, ready),
        config=config,
        task=rec.task or None,
        tags=_tags(rec),
        ai_gateway=_gateway(rec),
        description=rec.description or None,
    ).as_dict()


def endpoint_list(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"endpoints": items}


def tags(rec: st.EndpointRecord) -> dict[str, Any]:
    """``EndpointTags``: the answer of patch tags."""
    return {"tags": [t.as_dict() for t in _tags(rec) or []]}


def ai_gateway(gateway: dict[str, Any]) -> dict[str, Any]:
    """``PutAiGatewayResponse``."""
    return sv.PutAiGatewayResponse.from_dict(gateway).as_dict()


def catalog(name: str) -> dict[str, Any]:
    """A Unity Catalog catalog (``CatalogInfo``) of the local workspace."""
    from databricks.sdk.service.catalog import CatalogInfo, CatalogType

    kind = CatalogType.SYSTEM_CATALOG if name == "system" else CatalogType.MANAGED_CATALOG
    return CatalogInfo(name=name, full_name=name, catalog_type=kind, owner="local").as_dict()
