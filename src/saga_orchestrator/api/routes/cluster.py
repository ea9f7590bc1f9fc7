"""The cluster as the nodes registered in the database see it, and the instances it
quarantined as poison (admin)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from saga_orchestrator.api.audit import audit_entry
from saga_orchestrator.api.dependencies import current_tenant, services
from saga_orchestrator.api.problems import problem_responses
from saga_orchestrator.errors import NotFound

router = APIRouter(prefix="/api/v1/cluster", tags=["cluster"])

_ERRORS: Final[dict[int | str, dict[str, Any]]] = problem_responses(503)
Tenant = Annotated[str, Depends(current_tenant)]


class NodeOut(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    address: str
    version: str
    started_at: datetime
    last_heartbeat: datetime = Field(description="Stamped by the database's clock.")
    instances: int = Field(description="Unfinished instances it holds a current lease on.")
    leader: bool = Field(description="Holds the lease of the cluster chores now.")
    this_node: bool = Field(description="The node that answered this request.")


class NodeList(BaseModel):
    model_config = ConfigDict(frozen=True)

    items: list[NodeOut]
    leader_epoch: int | None = Field(default=None, description="Rises with every change of leader.")


@router.get("/nodes", summary="The nodes serving this database, and the leader", responses=_ERRORS)
async def list_nodes(request: Request) -> NodeList:
    found = (await services(request)).cluster
    nodes = await found.store.list_nodes()
    leadership = found.leadership
    leader = leadership.holder if leadership is not None else None
    return NodeList(
        items=[
            NodeOut(
                id=node.node_id,
                address=node.address,
                version=node.version,
                started_at=node.started_at,
                last_heartbeat=node.heartbeat_at,
                instances=node.instances,
                leader=node.node_id == leader,
                this_node=node.node_id == found.node_id,
            )
            for node in nodes
        ],
        leader_epoch=None if leadership is None else leadership.epoch,
    )


class QuarantinedOut(BaseModel):
    model_config = ConfigDict(frozen=True)

    instance_id: str
    takeovers: int = Field(description="Times its lease was taken over from a silent owner.")
    quarantined_at: datetime


class QuarantineList(BaseModel):
    model_config = ConfigDict(frozen=True)

    items: list[QuarantinedOut]


@router.get(
    "/quarantine",
    summary="The tenant's instances parked as poison: they crashed their owners too often",
    responses=_ERRORS,
)
async def list_quarantine(request: Request, tenant: Tenant) -> QuarantineList:
    store = (await services(request)).instances.store
    return QuarantineList(
        items=[
            QuarantinedOut(
                instance_id=found.instance_id,
                takeovers=found.takeovers,
                quarantined_at=found.quarantined_at,
            )
            for found in await store.list_quarantined(tenant)
        ]
    )


@router.post(
    "/quarantine/{instance_id}/release",
    status_code=204,
    summary="Let the cluster take a quarantined instance up again",
    responses=problem_responses(404, 422, 503),
)
async def release_quarantine(
    request: Request,
    tenant: Tenant,
    instance_id: Annotated[str, Path(max_length=200)],
) -> Response:
    store = (await services(request)).instances.store
    entry = audit_entry(tenant, "instance.release_quarantine", "instance", instance_id)
    if not await store.release_quarantine(tenant, instance_id, audit=entry):
        raise NotFound(f"instance {instance_id} is not quarantined")
    return Response(status_code=204)
