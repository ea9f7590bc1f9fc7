"""The REST API: a FastAPI app over a wired node, built by :func:`create_app`."""

from saga_orchestrator.api.app import create_app
from saga_orchestrator.api.options import ApiOptions

__all__ = ["ApiOptions", "create_app"]
