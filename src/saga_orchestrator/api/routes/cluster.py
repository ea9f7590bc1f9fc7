"""The cluster as the nodes registered in the database see it (admin)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from saga_orchestrator.api.dependencies import services
from saga_orchestrator.api.problems import problem_responses

router = APIRouter(prefix="/api/v1/cluster", tags=["cluster"])

_ERRORS: Final[dict[int | str, dict[str, Any]]] = problem_responses(503)


class NodeOut(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    address: str
    version: str
    started_at: datetime
    last_heartbeat: datetime = Field(description="Stamped by the database's clock.")
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
                leader=node.node_id == leader,
                this_node=node.node_id == found.node_id,
            )
            for node in nodes
        ],
        leader_epoch=None if leadership is None else leadership.epoch,
    )
