"""Checkpoints of a run's recorded iterations: `GET /v1/runs/{run_id}/checkpoints` (list),
`GET /v1/runs/{run_id}/checkpoints/{version}/archive` (one checkpoint directory as a streamed tar) and
`GET /v1/runs/{run_id}/checkpoints/{version}/files/{name}` (one file of it)."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, StreamingResponse

from sparring.services.api.deps import READ, RUN_ID, VERSION, Service
from sparring.services.api.errors import error_response
from sparring.services.api.schemas import BINARY, ERRORS, INVALID, NOT_FOUND, CheckpointList, Problem
from sparring.services.runs import CheckpointNotFound

router = APIRouter(tags=["checkpoints"])

CKPT_MISSING: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    **INVALID,
    404: {"model": Problem, "description": "no such run, version or file"},
}


@router.get(
    "/v1/runs/{run_id}/checkpoints",
    response_model=CheckpointList,
    summary="Checkpoints of recorded iterations",
    dependencies=READ,
    responses={**ERRORS, **NOT_FOUND},
)
def checkpoints(run_id: RUN_ID, service: Service) -> dict[str, Any]:
    return {"checkpoints": service.checkpoints(run_id)}


@router.get(
    "/v1/runs/{run_id}/checkpoints/{version}/archive",
    summary="One checkpoint directory as a tar stream (an ordinary Hugging Face checkpoint)",
    dependencies=READ,
    response_class=StreamingResponse,
    responses={**CKPT_MISSING, 200: {"description": "a POSIX tar stream", "content": {"application/x-tar": BINARY}}},
)
def checkpoint_archive(run_id: RUN_ID, version: VERSION, service: Service) -> Any:
    try:
        directory = service.checkpoint_dir(run_id, version)
    except CheckpointNotFound as err:
        return error_response(404, str(err))
    return StreamingResponse(
        tar_stream(directory, f"{run_id}-v{version}"),
        media_type="application/x-tar",
        headers={"Content-Disposition": f'attachment; filename="{run_id}-v{version}.tar"'},
    )


@router.get(
    "/v1/runs/{run_id}/checkpoints/{version}/files/{name}",
    summary="One file of a checkpoint",
    dependencies=READ,
    response_class=FileResponse,
    responses={**CKPT_MISSING, 200: {"description": "the file's bytes", "content": {"application/octet-stream": BINARY}}},
)
def checkpoint_file(
    run_id: RUN_ID, version: VERSION, name: Annotated[str, PathParam(max_length=255)], service: Service
) -> Any:
    try:
        path = service.checkpoint_file(run_id, version, name)
    except CheckpointNotFound as err:
        return error_response(404, str(err))
    return FileResponse(path, filename=name, media_type="application/octet-stream")


def tar_stream(directory: Path, prefix: str, chunk: int = 1 << 20) -> Iterator[bytes]:
    """A POSIX tar of the regular files of `directory`, streamed: never more than `chunk` bytes in memory."""
    for path in sorted(directory.iterdir()):
        if not path.is_file():
            continue
        info = tarfile.TarInfo(f"{prefix}/{path.name}")
        stat = path.stat()
        info.size, info.mtime, info.mode = stat.st_size, int(stat.st_mtime), 0o644
        yield info.tobuf(format=tarfile.PAX_FORMAT)
        sent = 0
        with path.open("rb") as f:
            while block := f.read(chunk):
                sent += len(block)
                yield block
        if sent != info.size:
            raise OSError(f"{path} changed size while being archived")
        if info.size % tarfile.BLOCKSIZE:
            yield b"\0" * (tarfile.BLOCKSIZE - info.size % tarfile.BLOCKSIZE)
    yield b"\0" * (2 * tarfile.BLOCKSIZE)
