"""`GET /metrics`: the Prometheus exposition of the app's registry (services/metrics.py); needs a token."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sparring.services.api.deps import READ, Registry
from sparring.services.api.schemas import ERRORS, TEXT

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    summary="Prometheus metrics (token needed)",
    dependencies=READ,
    response_class=Response,  # no media type of its own: the 200 is documented as text/plain only
    responses={**ERRORS, 200: {"description": "the Prometheus text exposition format", "content": {"text/plain": TEXT}}},
)
def metrics(registry: Registry) -> Response:
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
