"""Checkpoints of a run's recorded iterations: `GET /v1/runs/{run_id}/checkpoints` (list),
`GET /v1/runs/{run_id}/checkpoints/{version}/archive` (one checkpoint directory as a streamed tar) and
`GET /v1/runs/{run_id}/checkpoints/{version}/files/{name}` (one file of it).

A LoRA run's checkpoint exports two ways (`archive?part=`): `merged` (the default) is the checkpoint dir, an
ordinary HF model with the adapter merged in; `adapter` is its `adapter/` dir alone (peft `save_pretrained`:
`adapter_config.json` + `adapter_model.safetensors`, to load with `PeftModel.from_pretrained` on the base
model or serve as a vLLM LoRA adapter)."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
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
def checkpoint_archive(
    run_id: RUN_ID,
    version: VERSION,
    service: Service,
    part: Annotated[
        Literal["merged", "adapter"],
        Query(description="merged = the whole model (adapter merged in for LoRA runs); adapter = a LoRA run's adapter only"),
    ] = "merged",
) -> Any:
    try:
        directory = service.checkpoint_dir(run_id, version)
    except CheckpointNotFound as err:
        return error_response(404, str(err))
    name = f"{run_id}-v{version}"
    if part == "adapter":
        from sparring.workers.trainer import LORA_ADAPTER_DIR  # (imports torch: only for this export)

        directory, name = directory / LORA_ADAPTER_DIR, f"{name}-adapter"
        if not (directory / "adapter_model.safetensors").is_file():
            return error_response(404, f"checkpoint v{version} of run {run_id!r} has no LoRA adapter (not a trainer.lora run)")
    return StreamingResponse(
        tar_stream(directory, name),
        media_type="application/x-tar",
        headers={"Content-Disposition": f'attachment; filename="{name}.tar"'},
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
