"""The /v1/images/jobs routes: a generation started by one request and followed by others (``jobs.py``).

``POST`` takes the body of ``/v1/images/generations`` (same parsing, same per-caller rate limit) and answers 202
with the job; ``GET`` reads it; ``DELETE`` cancels it (or forgets it once ended); ``GET …/events`` streams its
progress as server-sent events until it ends.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..backends import GenerationControl
from . import docs
from .access import ContextDep
from .body import read_body
from .jobs import Job
from .schemas import GenerationBody, ImageJob, ImagesResponse
from .serving import admit, answer, base_url

EVENTS_POLL = 0.25
"""Seconds between two looks at a running job's progress while streaming its events."""
EVENTS_KEEPALIVE = 15.0
"""Seconds of silence after which the stream sends a comment line, so that proxies keep the connection open."""
_FINAL_EVENTS = {"succeeded": "done", "failed": "failed", "cancelled": "cancelled"}

router = APIRouter(prefix="/v1/images/jobs", tags=["images"], responses=docs.CLIENT_ERRORS)


class EventStreamResponse(StreamingResponse):
    media_type = "text/event-stream"


@router.post(
    "",
    status_code=202,
    response_model=ImageJob,
    summary="Start a generation as a job",
    description=docs.JOBS_DESCRIPTION,
    openapi_extra={"requestBody": docs.GENERATION_BODY},
    responses=docs.JOB_CREATE_RESPONSES,
)
async def create_job(request: Request, context: ContextDep) -> Response:
    wire = GenerationBody.parse(await read_body(request))
    admit(context)
    context.config.prompt_policy().check(wire.prompt)  # a refused prompt is a 400 now, not a failed job later
    base = base_url(request, context)

    async def work(control: GenerationControl) -> ImagesResponse:
        return await answer(wire, context, base=base, control=control)

    job = context.hub.api.jobs.submit(context.caller.limit_key, work)
    return JSONResponse(job.payload(), status_code=202, headers={"Location": f"{base}/v1/images/jobs/{job.id}"})


@router.get(
    "/{job_id}",
    response_model=ImageJob,
    summary="Read a job: its status, progress and, once succeeded, its images",
    responses=docs.JOB_RESPONSES,
)
async def get_job(job_id: str, context: ContextDep) -> Response:
    return JSONResponse(context.hub.api.jobs.get(job_id, context.caller.limit_key).payload())


@router.delete(
    "/{job_id}",
    response_model=ImageJob,
    summary="Cancel a job (or forget one that has ended)",
    description=docs.JOB_DELETE_DESCRIPTION,
    responses=docs.JOB_RESPONSES,
)
async def delete_job(job_id: str, context: ContextDep) -> Response:
    return JSONResponse(context.hub.api.jobs.delete(job_id, context.caller.limit_key).payload())


@router.get(
    "/{job_id}/events",
    response_class=EventStreamResponse,
    summary="Stream a job's progress as server-sent events",
    description=docs.JOB_EVENTS_DESCRIPTION,
    responses={200: docs.EVENT_STREAM, **docs.JOB_RESPONSES},
)
async def job_events(job_id: str, context: ContextDep) -> Response:
    job = context.hub.api.jobs.get(job_id, context.caller.limit_key)
    return EventStreamResponse(_events(job), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _events(job: Job) -> AsyncIterator[str]:
    """``progress`` whenever the status or the percentage changes, then one final event with the job; a client
    that goes away cancels this generator (starlette listens for the disconnect), which is no error."""
    last: tuple[str, int] | None = None
    quiet = 0.0
    while not job.finished:
        now = (job.status, job.progress)
        if now != last:
            last, quiet = now, 0.0
            yield _event("progress", {"status": now[0], "progress": now[1]})
        elif quiet >= EVENTS_KEEPALIVE:
            quiet = 0.0
            yield ": keep-alive\n\n"
        await job.wait(EVENTS_POLL)
        quiet += EVENTS_POLL
    yield _event(_FINAL_EVENTS[job.status], job.payload())


def _event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
