"""What the routers share: the run service and metrics registry of the app serving the request, the token
checks every route declares, and the validated path parameters used by more than one router.

`create_app` (services/api/app.py) puts the service and registry on `app.state`; routers never hold them.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi import Path as PathParam
from prometheus_client import CollectorRegistry

from sparring.services.auth import require_read, require_write
from sparring.services.runs import RunService

# Route-level token checks (TokenGate has already refused bad tokens; these say so in the schema too).
READ = [Depends(require_read)]
WRITE = [Depends(require_write)]

RUN_ID = Annotated[str, PathParam(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:-]+$")]
VERSION = Annotated[int, PathParam(ge=0, le=10**9)]


async def get_service(request: Request) -> RunService:
    return request.app.state.service


async def get_registry(request: Request) -> CollectorRegistry:
    return request.app.state.registry


Service = Annotated[RunService, Depends(get_service)]
Registry = Annotated[CollectorRegistry, Depends(get_registry)]
