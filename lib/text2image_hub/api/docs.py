"""The OpenAPI documentation of /v1: error examples, response headers and the long descriptions (data, not code)."""

from __future__ import annotations

from typing import Any

from ..backends import MAX_IMAGES
from .jobs import MAX_ACTIVE_PER_CALLER, MAX_KEPT_PER_CALLER, TOO_MANY_RETRY_AFTER
from .schemas import ErrorEnvelope, GenerationBody


def error_doc(description: str, example: dict[str, Any]) -> dict[str, Any]:
    return {"model": ErrorEnvelope, "description": description, "content": {"application/json": {"example": example}}}


def envelope(message: str, error_type: str, code: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


BEARER = (
    "An API key from Administration settings → Artificial intelligence → Text2Image Hub → API keys "
    "(standalone: T2I_API_KEYS). Through Nextcloud, a logged-in user needs no key."
)
UNAUTHORIZED = error_doc(
    "No valid credentials: log in to Nextcloud, or send an API key.",
    envelope("Authentication required: …", "authentication_error", "INVALID_API_KEY"),
)
RATE_LIMITED = error_doc(
    "The per-user/per-key limit (admin setting api_rate_limit) or the remote service's limit; see Retry-After.",
    envelope("Too many requests: …", "rate_limit_error", "RATE_LIMITED"),
)
UNAVAILABLE = error_doc(
    "The backend is loading, downloading or unreachable, or Nextcloud did not answer; see Retry-After.",
    envelope(
        "The image model is still being downloaded to this server (42 % done). …",
        "service_unavailable",
        "MODEL_DOWNLOADING",
    ),
)
INTERNAL = error_doc(
    "An internal or configuration error (the server log has the details).",
    envelope("The server had an internal error. Try again later.", "server_error", "INTERNAL_ERROR"),
)
CLIENT_ERRORS: dict[int | str, dict[str, Any]] = {
    "4XX": error_doc(
        "A client error, in OpenAI's envelope.",
        envelope("Invalid 'model_id': …", "invalid_request_error", "INVALID_REQUEST", "model_id"),
    )
}
MODEL_NOT_FOUND = error_doc(
    "Unknown model.",
    envelope("The model 'x' does not exist or is not enabled.", "not_found_error", "MODEL_NOT_FOUND", "model"),
)
IMAGE_NOT_FOUND = error_doc(
    "Unknown or expired image.",
    envelope("This image does not exist or has expired: …", "not_found_error", "IMAGE_NOT_FOUND", "image_id"),
)

GENERATION_BODY = {
    "required": True,
    "content": {
        media: {"schema": GenerationBody.model_json_schema(by_alias=True)}
        for media in ("application/json", "multipart/form-data", "application/x-www-form-urlencoded")
    },
}
GENERATION_DESCRIPTION = (
    "OpenAI's `POST /v1/images/generations` with extensions `seed`, `seeds`, `negative_prompt`, `steps`, "
    "`guidance_scale`, `style` and `useCache`. Send JSON, multipart/form-data or form-urlencoded. The answer names the "
    "model, backend, seeds and generation time in the body and in the headers `X-Model`, `X-Backend`, "
    "`X-Seeds`, `X-Generation-Seconds` (and `X-Cache: hit|miss`).\n\n"
    "**Models.** Omit `model` (or send an OpenAI name such as `dall-e-2`, as Nextcloud's OpenAI integration "
    "does) for the model Nextcloud tasks use; other ids come from `GET /v1/models`; an unknown id is a 400 "
    "`MODEL_NOT_FOUND` (as OpenAI answers it). A parameter the model cannot take (`steps`, `guidance_scale`, "
    "`negative_prompt`, or a seed for a remote service that takes none) is a 400 `UNSUPPORTED_PARAMETER`, never "
    "silently dropped; the model's `capabilities` in `GET /v1/models` say what it takes.\n\n"
    "**Cache.** Requests that give `seed` or `seeds` are answered from an in-memory result cache (keyed by "
    "prompt, style, model, size, steps, guidance, negative prompt, seeds, n and the admin settings that shape "
    "images) "
    "unless `useCache` is false. Without seeds every request makes new images.\n\n"
    "**URLs.** `response_format=url` answers links to `GET /v1/images/{id}`, which need no authentication (the "
    "unguessable id is the capability) and expire after the image TTL (`T2I_IMAGE_TTL`, default 3600 s). "
    "Called through Nextcloud, the links point through Nextcloud's AppAPI proxy.\n\n"
    f"**Limits.** 1 to {MAX_IMAGES} images per request. The admin setting `api_rate_limit` allows that many "
    "requests per minute per user or key (429 with `Retry-After` beyond it). A prompt the admin's blocked terms "
    "refuse is a 400 `PROMPT_REJECTED`. `style` takes the values of the model's `capabilities.styles` (OpenAI's "
    "`vivid` and `natural` mean none); `quality` is accepted and ignored."
)
GENERATION_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "headers": {
            name: {"description": text, "schema": {"type": "string"}}
            for name, text in (
                ("X-Model", "The model that made the images."),
                ("X-Backend", "local or remote."),
                ("X-Seeds", "The seeds, comma-separated, in image order (absent when the model takes no seed)."),
                ("X-Generation-Seconds", "Seconds the generation took."),
                ("X-Cache", "hit or miss."),
            )
        }
    },
    400: error_doc(
        "Bad input; `code` names the problem: MISSING_PROMPT, PROMPT_TOO_LONG, INVALID_SIZE, INVALID_N, "
        "MODEL_NOT_FOUND, INVALID_QUALITY, INVALID_STYLE, INVALID_RESPONSE_FORMAT, INVALID_SEED, INVALID_SEEDS, "
        "INVALID_STEPS, INVALID_GUIDANCE, INVALID_GUIDANCE_SCALE, INVALID_NEGATIVE_PROMPT, INVALID_USE_CACHE, "
        "INVALID_MODEL, INVALID_USER, UNSUPPORTED_PARAMETER, INVALID_BODY, UNSUPPORTED_MEDIA_TYPE, "
        "REQUEST_TOO_LARGE, PROMPT_REJECTED, STYLES_DISABLED.",
        envelope(
            "The size 640x480 is not supported by test/model. Supported sizes: 512x512, 1024x1024.",
            "invalid_request_error",
            "INVALID_SIZE",
            "size",
        ),
    ),
    401: UNAUTHORIZED,
    429: RATE_LIMITED,
    500: INTERNAL,
    502: error_doc(
        "The remote image service answered with an error.",
        envelope("The image service reported an error. Try again later.", "server_error", "REMOTE_ERROR"),
    ),
    503: UNAVAILABLE,
}
MODELS_DESCRIPTION = (
    "OpenAI's model list; each model has a `capabilities` extension (sizes, steps range, guidance, negative "
    "prompt and seed support, max n, backend). The first is the one used when a request names no model."
)
IMAGE_DESCRIPTION = (
    "No authentication: the unguessable id is the capability. Images expire after the image TTL (default one "
    "hour); then this answers 404 IMAGE_NOT_FOUND."
)
PNG_RESPONSE = {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}, "description": "The PNG."}

JOB_NOT_FOUND = error_doc(
    "Unknown or expired job, or another caller's (which looks exactly like an unknown one).",
    envelope("This job does not exist or has expired: …", "not_found_error", "JOB_NOT_FOUND", "job_id"),
)
JOBS_DESCRIPTION = (
    "The body of `POST /v1/images/generations` (JSON, multipart or form-urlencoded, the same checks), answered at "
    "once with 202 and the job (`Location`: its URL) instead of the images, for generations that outlast a "
    "proxy's timeout. Follow it with `GET /v1/images/jobs/{job_id}` or its `/events`; once `succeeded` it holds "
    "the `data` (and `model`, `seeds`, …) the synchronous call answers. What only the model can check (its sizes, "
    "steps, the model id) ends the job `failed` with the same error code the synchronous call answers.\n\n"
    "Jobs share the GPU queue and the remote service's limits with Nextcloud tasks and the synchronous call. A job "
    "is visible to its creator only (the API key, or the Nextcloud user), and is kept for the image TTL "
    "(`T2I_IMAGE_TTL`, default 3600 s) after it ends. **Limits**: `api_rate_limit` counts job creations like "
    f"synchronous requests; at most {MAX_ACTIVE_PER_CALLER} jobs per user or key may be queued or running at once "
    f"(429 `TOO_MANY_JOBS` with `Retry-After: {TOO_MANY_RETRY_AFTER:.0f}` beyond it), and {MAX_KEPT_PER_CALLER} are "
    "kept per user or key (a new one drops the oldest ended one)."
)
JOB_CREATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {
        "description": "The job, queued.",
        "headers": {"Location": {"description": "The job's URL.", "schema": {"type": "string"}}},
    },
    400: GENERATION_RESPONSES[400],
    401: UNAUTHORIZED,
    429: error_doc(
        f"`api_rate_limit` reached (RATE_LIMITED), or {MAX_ACTIVE_PER_CALLER} jobs of this caller still run "
        "(TOO_MANY_JOBS); see Retry-After.",
        envelope(
            f"Too many jobs: at most {MAX_ACTIVE_PER_CALLER} per user or API key may run at once. …",
            "rate_limit_error",
            "TOO_MANY_JOBS",
        ),
    ),
    500: INTERNAL,
    503: UNAVAILABLE,
}
JOB_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: UNAUTHORIZED,
    404: JOB_NOT_FOUND,
    500: INTERNAL,
    503: UNAVAILABLE,
}
JOB_DELETE_DESCRIPTION = (
    "A job still queued or running is cancelled: it reads `cancelled` at once (this answer says so) and its "
    "generation stops at its next step (the GPU) or before its next request (a remote service). A job that has "
    "ended is forgotten: this answer is its last state, and it is 404 afterwards."
)
JOB_EVENTS_DESCRIPTION = (
    'Server-sent events: `event: progress` with `{"status", "progress"}` whenever either changes (looked at '
    "every 0.25 s), then one final `event: done`, `failed` or `cancelled` whose data is the job's JSON, and the "
    "stream ends (an `EventSource` should `close()` on it; reconnecting to an ended job sends the final event "
    "again). A comment line every 15 s of silence keeps proxies from closing the connection. Nextcloud's AppAPI "
    "proxy passes a response on only when it is complete: through Nextcloud, poll `GET /v1/images/jobs/{job_id}`."
)
EVENT_STREAM = {
    "description": "The job's events, until it ends.",
    "content": {
        "text/event-stream": {
            "schema": {"type": "string"},
            "example": 'event: progress\ndata: {"status":"running","progress":40}\n\n'
            'event: done\ndata: {"id":"…","object":"image.job","status":"succeeded","progress":100,…}\n\n',
        }
    },
}
