"""Health routes, open to everyone: `GET /healthz` (the process is up) and `GET /readyz` (Redis and Ray are
reachable; 503 with the failing check otherwise)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from sparring.services.api.deps import Service
from sparring.services.api.schemas import Health
from sparring.shared.redis_server import RedisUnavailable, ping

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, response_model_exclude_none=True, summary="The process is up")
def healthz() -> dict[str, Any]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Health,
    summary="Redis and Ray are reachable",
    responses={503: {"model": Health, "description": "a dependency is unreachable"}},
)
def readyz(service: Service) -> Any:
    checks: dict[str, str] = {}
    try:  # a fresh connection without retries: the service's client would wait out an outage first
        ping(service.redis_url, timeout_s=2.0)
        checks["redis"] = "ok"
    except RedisUnavailable as err:
        checks["redis"] = f"unreachable: {type(err.__cause__ or err).__name__}"
    try:
        import ray

        checks["ray"] = "ok" if ray.is_initialized() and ray.cluster_resources() is not None else "not connected"
    except Exception as err:  # noqa: BLE001
        checks["ray"] = f"unreachable: {type(err).__name__}"
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse(status_code=200 if ok else 503, content={"status": "ok" if ok else "unavailable", "checks": checks})
