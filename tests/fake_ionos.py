"""An imitation of the IONOS AI Model Hub's OpenAI-compatible image API: a real HTTP server on 127.0.0.1.

It behaves like the documented service (DESIGN.md §5): bearer token checked (401 with an IONOS-shaped body),
``n > 1`` and unknown parameters rejected (400, IONOS-shaped), prompts up to 256 characters, a token bucket of
images (``images_per_minute``, ``burst``) and of requests (``requests_per_second``) answering 429 with
``Retry-After`` in real seconds (fractional), and ``data[].b64_json`` PNGs of the requested size (a solid colour
from a small palette, picked by the prompt and a counter). ``time_scale`` speeds its clock up: with 60, one real
second is one simulated minute, so "10 images per minute" becomes 10 per real second.

Test knobs: ``answer="url"`` (answer ``data[].url`` served from ``/files/<id>``), ``fail_next(status, count)``,
``hang_next(seconds, count)``, ``fault_next(mode, count)`` (the faults of a misbehaving service, see ``FAULTS``),
``latency`` (simulated seconds per image), counters in ``stats()`` and the bodies received in ``bodies()``.
Usable from sync and async tests: uvicorn runs in its own thread (``tests.servers.ServerThread``)::

    with FakeIonos(token="t0k3n", time_scale=60) as ionos:
        ... ionos.base_url ...  # "http://127.0.0.1:<port>/v1"
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import io
import itertools
import math
import struct
import threading
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from PIL import Image
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.servers import ServerThread
from text2image_hub.backends.presets import IONOS, RemoteAccount, RemoteLimits

MODEL = "black-forest-labs/FLUX.1-schnell"
OTHER_MODELS = ("meta-llama/Llama-3.3-70B-Instruct", "BAAI/bge-m3")
SIZES = ("1024x1024", "768x768", "512x512", "1024x768", "768x1024", "1280x720", "720x1280", "256x256")
MAX_PROMPT = 256
DEFAULT_TOKEN = "ionos-test-token"
PALETTE_SIZE = 32
ACCEPTED_KEYS = frozenset({"model", "prompt", "size", "n", "response_format", "user"})
FAULTS = {
    "trickle": "a 200 whose body comes one byte every half second, for ever",
    "bomb": "a 200 with a small PNG that declares 8192x8192 pixels (192 MB to decode)",
    "echo_token": "a 500 whose body quotes the Authorization header back",
    "refuse_prompt": "a 400, IONOS-shaped: the prompt was rejected by the content filter",
}
BOMB_SIDE = 8192


def ionos_account(fake: FakeIonos, *, token: str | None = None, client_limits: bool = True) -> RemoteAccount:
    """An IONOS-preset account pointing at ``fake``, its client limits time-scaled like the fake's own.

    ``client_limits=False``: no client-side limiting, to see the server's 429s.
    """
    scale = fake.time_scale
    limits = RemoteLimits(
        images_per_minute=fake.images_per_minute * scale if client_limits else None,
        burst=fake.burst if client_limits else None,
        requests_per_second=fake.requests_per_second * scale if client_limits else None,
        max_prompt_length=IONOS.max_prompt_length,
        max_images_per_request=IONOS.max_images_per_request,
    )
    return RemoteAccount(
        preset=IONOS,
        base_url=fake.base_url,
        api_key=SecretStr(fake.token if token is None else token),
        model=IONOS.model,
        limits=limits,
    )


def ionos_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        {"httpStatus": status, "messages": [{"errorCode": code, "message": message}]}, status, headers=headers
    )


@dataclass(frozen=True)
class FakeIonosStats:
    requests: int  # POST /images/generations received (all outcomes)
    images: int  # images answered
    rate_limited: int  # 429s
    server_errors: int  # 5xx
    unauthorized: int  # 401s
    bad_requests: int  # 400s / 404s
    hung: int  # requests held by hang_next
    downloads: int  # GET /files/<id>
    faults: int  # requests answered with a fault_next fault


class _Bucket:
    def __init__(self, capacity: float, per_second: float, now: float) -> None:
        self.capacity = capacity
        self.per_second = per_second
        self.tokens = capacity
        self.updated = now

    def take(self, amount: float, now: float) -> float:
        """Take ``amount`` and return 0, or take nothing and return the simulated seconds until it would fit."""
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.per_second)
        self.updated = now
        if self.tokens + 1e-9 >= amount:
            self.tokens -= amount
            return 0.0
        return (amount - self.tokens) / self.per_second


class FakeIonos:
    def __init__(
        self,
        *,
        token: str = DEFAULT_TOKEN,
        images_per_minute: float = 10,
        burst: int = 20,
        requests_per_second: float = 5,
        time_scale: float = 1.0,
        answer: Literal["b64_json", "url"] = "b64_json",
        latency: float = 0.0,
        strict: bool = True,
    ) -> None:
        self.token = token
        self.images_per_minute = images_per_minute
        self.burst = burst
        self.requests_per_second = requests_per_second
        self.time_scale = time_scale
        self.answer = answer
        self.latency = latency
        self.strict = strict
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._counter = itertools.count()
        self._counts = dict.fromkeys(FakeIonosStats.__dataclass_fields__, 0)
        self._bodies: list[dict[str, Any]] = []
        self._files: dict[str, bytes] = {}
        self._pngs: dict[tuple[str, int], bytes] = {}
        self._fail: list[int] = []
        self._hang: list[float] = []
        self._faults: list[str] = []
        self._epoch = time.monotonic()
        self._images = _Bucket(burst, images_per_minute / 60.0, 0.0)
        self._requests = _Bucket(max(1.0, requests_per_second), requests_per_second, 0.0)
        self._server: ServerThread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------------

    @property
    def root_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the fake IONOS server is not running")
        return self._server.url

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    def start(self) -> FakeIonos:
        self._stopping.clear()
        self._server = ServerThread(self._app(), name="fake-ionos")
        self._server.start()
        self.reset_clock()
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases hung requests at once
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> FakeIonos:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- knobs and counters ------------------------------------------------------------------------------------

    def reset_clock(self) -> None:
        """Restart simulated time with full buckets (call right before a measured run)."""
        with self._lock:
            self._epoch = time.monotonic()
            self._images = _Bucket(self.burst, self.images_per_minute / 60.0, 0.0)
            self._requests = _Bucket(max(1.0, self.requests_per_second), self.requests_per_second, 0.0)

    def fail_next(self, status: int = 500, count: int = 1) -> None:
        """The next ``count`` generation requests answer ``status`` (before any rate accounting)."""
        with self._lock:
            self._fail.extend([status] * count)

    def hang_next(self, seconds: float, count: int = 1) -> None:
        """The next ``count`` accepted generation requests wait ``seconds`` (real) before answering."""
        with self._lock:
            self._hang.extend([seconds] * count)

    def fault_next(self, mode: str, count: int = 1) -> None:
        """The next ``count`` generation requests get the fault ``mode`` (one of ``FAULTS``), after the token check."""
        if mode not in FAULTS:
            raise ValueError(f"unknown fault {mode!r}: choose from {sorted(FAULTS)}")
        with self._lock:
            self._faults.extend([mode] * count)

    def clear_faults(self) -> None:
        """Forget the faults and hangs not used yet (a generation that failed early sends fewer requests)."""
        with self._lock:
            self._faults.clear()
            self._hang.clear()

    def stats(self) -> FakeIonosStats:
        with self._lock:
            return FakeIonosStats(**self._counts)

    def bodies(self) -> list[dict[str, Any]]:
        """The JSON bodies of the generation requests received, in order."""
        with self._lock:
            return list(self._bodies)

    def _count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[name] += amount

    def _now(self) -> float:
        """Simulated seconds since start (or ``reset_clock``)."""
        return (time.monotonic() - self._epoch) * self.time_scale

    # -- the HTTP app ------------------------------------------------------------------------------------------

    def _app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/images/generations", self._generations, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/files/{file_id}", self._file, methods=["GET"]),
            ]
        )

    def _authorized(self, request: Request) -> bool:
        return request.headers.get("authorization", "") == f"Bearer {self.token}"

    def _unauthorized(self) -> JSONResponse:
        self._count("unauthorized")
        return ionos_error(401, "paas-auth-1", "Unauthorized")

    def _bad_request(self, message: str, status: int = 400) -> JSONResponse:
        self._count("bad_requests")
        return ionos_error(status, "paas-validation-1" if status == 400 else "paas-not-found-1", message)

    async def _models(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._unauthorized()
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": model, "object": "model", "owned_by": "IONOS"} for model in (MODEL, *OTHER_MODELS)],
            }
        )

    async def _file(self, request: Request) -> Response:
        with self._lock:
            content = self._files.get(request.path_params["file_id"])
        if content is None:
            return Response(status_code=404)
        self._count("downloads")
        return Response(content, media_type="image/png")

    async def _generations(self, request: Request) -> Response:
        self._count("requests")
        if not self._authorized(request):
            return self._unauthorized()
        with self._lock:
            fault = self._faults.pop(0) if self._faults else None
            fail = self._fail.pop(0) if self._fail else None
        if fault is not None:
            self._count("faults")
            return self._fault(fault, request)
        if fail is not None:
            if fail == 429:
                self._count("rate_limited")
                return ionos_error(429, "paas-rate-limit-1", "Too Many Requests", headers={"Retry-After": "0.01"})
            if fail >= 500:
                self._count("server_errors")
            return ionos_error(fail, "paas-internal-1", "Internal Server Error")
        try:
            body = await request.json()
        except ValueError:
            return self._bad_request("The request body is not valid JSON.")
        if not isinstance(body, dict):
            return self._bad_request("The request body must be a JSON object.")
        with self._lock:
            self._bodies.append(body)
        problem = self._validate(body)
        if problem is not None:
            return problem
        with self._lock:
            now = self._now()
            wait = self._requests.take(1, now)
            if wait <= 0:
                wait = self._images.take(body.get("n", 1), now)
            hang = self._hang.pop(0) if wait <= 0 and self._hang else None
        if wait > 0:
            self._count("rate_limited")
            return ionos_error(
                429,
                "paas-rate-limit-1",
                "Too Many Requests",
                headers={"Retry-After": f"{math.ceil(wait / self.time_scale * 1000) / 1000:.3f}"},  # rounded up
            )
        if hang is not None:
            self._count("hung")
            await self._sleep(hang)
        if self.latency:
            await asyncio.sleep(self.latency / self.time_scale)
        n = int(body.get("n", 1))
        data = [self._image(body["prompt"], body["size"]) for _ in range(n)]
        self._count("images", n)
        return JSONResponse(
            {
                "created": int(time.time()),
                "data": data,
                "usage": {"prompt_tokens": len(body["prompt"].split()), "total_tokens": 0},
            }
        )

    def _validate(self, body: dict[str, Any]) -> JSONResponse | None:
        unknown = sorted(set(body) - ACCEPTED_KEYS)
        if self.strict and unknown:
            return self._bad_request(f"Unknown parameter(s): {', '.join(unknown)}")
        if body.get("model") != MODEL:
            return self._bad_request(f"Model {body.get('model')!r} not found.", status=404)
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            return self._bad_request("prompt is required.")
        if len(prompt) > MAX_PROMPT:
            return self._bad_request(f"prompt must be at most {MAX_PROMPT} characters.")
        if body.get("size", "1024x1024") not in SIZES:
            return self._bad_request(f"size must be one of {', '.join(SIZES)}.")
        body.setdefault("size", "1024x1024")
        n = body.get("n", 1)
        if not isinstance(n, int) or n != 1:
            return self._bad_request("n must be 1: this model generates one image per request.")
        if body.get("response_format", "b64_json") != "b64_json":
            return self._bad_request("response_format must be b64_json.")
        return None

    def _image(self, prompt: str, size: str) -> dict[str, str]:
        serial = next(self._counter)
        digest = hashlib.sha256(f"{prompt}\x00{serial}".encode()).digest()
        content = self._png(size, digest[0] % PALETTE_SIZE)
        if self.answer == "url":
            file_id = f"{serial}-{digest.hex()[:12]}.png"
            with self._lock:
                self._files[file_id] = content
            return {"url": f"{self.root_url}/files/{file_id}"}
        return {"b64_json": base64.b64encode(content).decode("ascii")}

    def _png(self, size: str, colour: int) -> bytes:
        """A solid PNG from a small palette, encoded once: a slow fake would blur the rate limits it enforces."""
        key = (size, colour)
        with self._lock:
            cached = self._pngs.get(key)
        if cached is None:
            width, height = (int(part) for part in size.split("x"))
            rgb = (colour * 37 % 256, colour * 91 % 256, colour * 151 % 256)
            buffer = io.BytesIO()
            Image.new("RGB", (width, height), rgb).save(buffer, "PNG", compress_level=1)
            cached = buffer.getvalue()
            with self._lock:
                self._pngs[key] = cached
        return cached

    def _fault(self, mode: str, request: Request) -> Response:
        if mode == "trickle":
            return StreamingResponse(self._trickle(), media_type="application/json")
        if mode == "bomb":
            return JSONResponse({"created": int(time.time()), "data": [{"b64_json": _bomb_b64()}]})
        if mode == "echo_token":
            return Response(f"upstream error for {request.headers.get('authorization')}", status_code=500)
        return ionos_error(400, "paas-validation-2", "The prompt was rejected by the content filter.")

    async def _trickle(self) -> AsyncIterator[bytes]:
        yield b'{"data": ['
        while not self._stopping.is_set():
            await asyncio.sleep(0.5)
            yield b" "

    async def _sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, cut short when the server stops (a thread each: for the few hung requests only)."""
        await asyncio.to_thread(self._stopping.wait, seconds)


@functools.cache
def _bomb_b64() -> str:
    """A valid PNG of ``BOMB_SIDE`` x ``BOMB_SIDE`` black RGB pixels: about 190 KB that decode to 192 MB."""
    row = b"\x00" + b"\x00" * (BOMB_SIDE * 3)
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(BOMB_SIDE)) + packer.flush()

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", BOMB_SIDE, BOMB_SIDE, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    return base64.b64encode(png).decode("ascii")
