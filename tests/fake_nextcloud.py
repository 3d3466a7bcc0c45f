"""A fake Nextcloud 34.0.1 + AppAPI 34.0.0, served over real HTTP on 127.0.0.1, for the test-suite.

It imitates what `tests/fixtures/contract/` (recorded from a real Nextcloud) shows, for the calls an ExApp makes
through nc_py_api 0.30.3 and for what users and admins do around it:

- **ExApp -> Nextcloud** (auth: ``EX-APP-ID`` + ``AUTHORIZATION-APP-API = base64("<user>:<secret>")``):
  capabilities (with ``app_api``), AppAPI's provider / settings-form / ``appconfig_ex`` / log / init-status /
  enabled-state endpoints under ``/ocs/v1.php/apps/app_api`` (OCS v1: errors are mostly HTTP 200 with
  ``meta.statuscode`` 404; bad auth is HTTP 401 statuscode 997), and the TaskProcessing provider endpoints under
  ``/ocs/v2.php/taskprocessing/tasks_provider`` (bad auth: HTTP 412 ``{"message": "ExApp required"}``), and the
  current user's details ``/ocs/v1.php/cloud/user`` (acting as a user: ``language`` is set by
  :meth:`FakeNextcloud.set_language`; this exchange is not in the recordings: its shape is the Provisioning API's).
- **Nextcloud -> ExApp**: ``GET /heartbeat``, ``POST /init``, ``PUT /enabled``, ``POST /trigger`` and proxied
  routes, sent with AppAPI's headers. Calls nest: the ExApp's ``set_init_status(100)`` is answered only after the
  fake has called ``/heartbeat`` and ``/enabled?enabled=1``; a user's schedule is answered only after ``/trigger``
  (3 s timeout by default) has been called.
- **users/admins -> Nextcloud** (HTTP basic auth; users ``admin`` (admin) and ``alice``): scheduling and reading
  tasks, downloading result files, cancelling, deleting, task types, listings, queue stats, declarative settings
  (incl. the sensitive-field ciphertext behaviour and the form-id trap), the AI admin page's provider preference,
  and the AppAPI proxy ``/index.php/apps/app_api/proxy/<appid>/<path>``.

Failure injection (:meth:`FakeNextcloud.set_failure`):

- ``"refuse"``: the listening socket is closed (clients get *connection refused*); clearing the mode listens again
  on the same port.
- ``"maintenance"``: every request gets HTTP 503 with an OCS ``"Service unavailable"`` envelope.
- ``"timeout"``: every request is held for ``hold_seconds`` (or until the mode is cleared) and then answered with
  HTTP 504 *without being processed*; a client with a shorter read timeout sees a read timeout.
- ``"wrong_secret"``: Nextcloud behaves as if the ExApp's secret did not match (AppAPI endpoints: 401/997;
  TaskProcessing provider endpoints: 412 "ExApp required"; capabilities still 200).

Per-call cost (:meth:`FakeNextcloud.set_call_costs`, default none): a real server takes tens of milliseconds per call
(the recordings' ``duration_ms``: about 45 ms to claim a task or report a result). A request whose path matches one
of the given regexes (searched, the first match wins) waits that many seconds (``await asyncio.sleep``) before it is
handled, so the fake goes on serving other calls meanwhile and calls still nest; ``reset`` clears the costs.

Deviations from the real server, on purpose: no cookies, no gzip, no PHP built-in server headers; ids start at 1;
only the ``core:text2image`` task type is known; a 404 page is a short HTML page; an unrecorded corner (for example
a non-sensitive form field saved through ``/value-sensitive``) is answered the simplest plausible way.

Everything public is thread-safe: tests drive the fake from their own thread or event loop while its server runs in
a background thread with its own loop. Methods that call the ExApp exist in a blocking form and an ``*_async`` form;
from a coroutine that shares its event loop with the ExApp under test, use the ``*_async`` form (the blocking one
would stall that loop while the fake waits for the ExApp).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import dataclasses
import enum
import json
import logging
import re
import secrets
import string
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Final, TypeVar
from urllib.parse import parse_qsl, quote

import httpx2
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from tests.servers import ServerThread

logger = logging.getLogger(__name__)

T = TypeVar("T")
JsonDict = dict[str, Any]

NEXTCLOUD_VERSION: Final = "34.0.1"
APP_API_VERSION: Final = "34.0.0"
TEXT2IMAGE: Final = "core:text2image"

STATUS_SCHEDULED: Final = "STATUS_SCHEDULED"
STATUS_RUNNING: Final = "STATUS_RUNNING"
STATUS_SUCCESSFUL: Final = "STATUS_SUCCESSFUL"
STATUS_FAILED: Final = "STATUS_FAILED"
STATUS_CANCELLED: Final = "STATUS_CANCELLED"
FINAL_STATUSES: Final = frozenset({STATUS_SUCCESSFUL, STATUS_FAILED, STATUS_CANCELLED})

FAILURE_MODES: Final = frozenset({"refuse", "maintenance", "timeout", "wrong_secret"})

PUBLIC: Final = 0
USER: Final = 1
ADMIN: Final = 2

TRIGGER_TIMEOUT_S: Final = 3.0
_APP_CALL_TIMEOUT_S: Final = 60.0
_HEARTBEAT_TIMEOUT_S: Final = 10.0

_OUTPUT_VALIDATION_ERROR: Final = (
    "The task was processed successfully but the provider's output doesn't pass validation against the task "
    "type's outputShape spec and/or the provider's own optionalOutputShape spec"
)
_CURL_HINT: Final = "(see https://curl.haxx.se/libcurl/c/libcurl-errors.html)"
_NOT_FOUND_PAGE: Final = (
    b'<!DOCTYPE html>\n<html class="ng-csp" lang="en">\n<head><meta charset="utf-8"><title>Nextcloud</title></head>\n'
    b"<body><h2>Page not found</h2><p>The page could not be found on the server.</p></body>\n</html>\n"
)

# nc_py_api's ShapeType numbers -> Nextcloud's EShapeType names.
_SHAPE_TYPE_NAMES: Final[Mapping[int, str]] = {
    0: "Number",
    1: "Text",
    2: "Image",
    3: "Audio",
    4: "Video",
    5: "File",
    6: "Enum",
    10: "ListOfNumbers",
    11: "ListOfTexts",
    12: "ListOfImages",
    13: "ListOfAudios",
    14: "ListOfVideos",
    15: "ListOfFiles",
}

# The task types the fake knows, as GET /ocs/v2.php/taskprocessing/tasktypes shows them (scenario 01).
_TASK_TYPES: Final[Mapping[str, JsonDict]] = {
    TEXT2IMAGE: {
        "name": "Generate image",
        "description": "Generate an image from a text prompt",
        "inputShape": {
            "input": {"name": "Prompt", "description": "Describe the image you want to generate", "type": "Text"},
            "numberOfImages": {
                "name": "Number of images",
                "description": "How many images to generate",
                "type": "Number",
            },
        },
        "outputShape": {
            "images": {"name": "Output images", "description": "The generated images", "type": "ListOfImages"},
        },
    },
}

_PHP_NUMERIC: Final = re.compile(r"[ \t\n\r\v\f]*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?[ \t\n\r\v\f]*")
_REQUEST_ID_ALPHABET: Final = string.ascii_letters + string.digits


class FakeNextcloudError(Exception):
    """The fake could not do what a test asked (for example the ExApp never finished its registration)."""


class FakeOcsError(FakeNextcloudError):
    """A 4xx answer of a user-side call, raised by the Python API (the HTTP endpoint answers the same)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"[{status}] {message}")
        self.status = status
        self.message = message


@dataclasses.dataclass(frozen=True)
class RecordedRequest:
    """One request the fake received. ``source`` is ``"app"`` when it carried ``EX-APP-ID``, else ``"user"``."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any
    body: bytes
    status: int
    source: str


@dataclasses.dataclass(frozen=True)
class AppCall:
    """One call the fake made to the ExApp. ``status`` is None when the call failed (``error`` says why)."""

    method: str
    target: str
    headers: dict[str, str]
    status: int | None
    error: str | None


# --------------------------------------------------------------------------------------------------------------------
# Internal state
# --------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Task:
    id: int
    type: str
    user_id: str | None
    app_id: str
    input: JsonDict
    custom_id: str
    include_watermark: bool
    scheduled_at: int
    last_updated: int
    completion_expected_at: int
    status: str = STATUS_SCHEDULED
    output: JsonDict | None = None
    progress: float | None = None
    started_at: int | None = None
    ended_at: int | None = None
    error_message: str | None = None
    user_facing_error_message: str | None = None


@dataclasses.dataclass
class _ConfigRow:
    id: int
    stored: str
    sensitive: int


@dataclasses.dataclass(frozen=True)
class _Provider:
    row_id: int
    data: JsonDict

    @property
    def id(self) -> str:
        return str(self.data.get("id", ""))


@dataclasses.dataclass(frozen=True)
class _File:
    id: int
    task_id: int
    name: str
    content: bytes


class Auth(enum.Enum):
    """Who may call a route, and how the fake answers anyone else (``_dispatch`` checks it before the handler)."""

    NONE = enum.auto()  # anyone
    APP_OCS_V1 = enum.auto()  # the ExApp (AppAPI's OCS v1 endpoints); else HTTP 401, OCS statuscode 997
    EXAPP_V2 = enum.auto()  # the ExApp (TaskProcessing provider endpoints); else 412 {"message": "ExApp required"}
    USER = enum.auto()  # a logged-in user; else 401 "Current user is not logged in"
    USER_OR_EXAPP_AS_USER = enum.auto()  # USER, or the ExApp acting as a known user (AppAPI auth with a user id)
    USER_OR_ANONYMOUS = enum.auto()  # a logged-in user or no login at all; a wrong login gets USER's 401
    ADMIN = enum.auto()  # an admin (an index.php controller): 401 / 403 with a plain JSON message
    PROXY = enum.auto()  # anyone; a wrong login counts as anonymous (the proxied route's access level decides)


@dataclasses.dataclass(frozen=True)
class _Route:
    method: str
    pattern: re.Pattern[str]
    handler: Callable[[_Req], Awaitable[Response]]
    auth: Auth


@dataclasses.dataclass
class _Scripted:
    method: str
    path: re.Pattern[str]
    status: int
    body: Any
    count: int


@dataclasses.dataclass
class _Req:
    """One request. ``user``: the user who logged in with HTTP basic auth (set by ``_dispatch`` for the user-side
    routes); None when nobody did, and for requests from the ExApp."""

    request: Request
    body: bytes
    params: dict[str, str]
    query: dict[str, str]
    request_id: str
    user: str | None = None

    @property
    def headers(self) -> Mapping[str, str]:
        return self.request.headers

    def json(self) -> Any:
        if not self.body:
            return None
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def json_object(self) -> JsonDict:
        data = self.json()
        return data if isinstance(data, dict) else {}


# --------------------------------------------------------------------------------------------------------------------
# Small pure helpers
# --------------------------------------------------------------------------------------------------------------------


def _now() -> int:
    return int(time.time())


def _request_id() -> str:
    return "".join(secrets.choice(_REQUEST_ID_ALPHABET) for _ in range(20))


def _json_bytes(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def _number(value: float | None) -> float | int | None:
    """PHP's json_encode writes 1.0 as 1 and 0.0 as 0."""
    if value is not None and float(value).is_integer():
        return int(value)
    return value


def _php_is_numeric(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    return isinstance(value, str) and _PHP_NUMERIC.fullmatch(value) is not None


def _sniff_content_type(content: bytes) -> str:
    if content.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if content.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if content.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if content[:4] == b"RIFF" and content[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def _basic_credentials(authorization: str) -> tuple[str, str] | None:
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def _phpify_empty(value: Any) -> Any:
    """PHP stores an empty JSON object as an empty array: ``{}`` comes back as ``[]``."""
    if isinstance(value, dict):
        return {k: _phpify_empty(v) for k, v in value.items()} if value else []
    if isinstance(value, list):
        return [_phpify_empty(v) for v in value]
    return value


def _setting_string(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "1" if value else ""
    return json.dumps(value)


def _validate_slot(key: str, type_name: str, value: Any, enum_values: list[Any] | None) -> None:
    problem: str | None = None
    if type_name == "Number" and not _php_is_numeric(value):
        problem = "Non-numeric item provided for Number slot"
    elif type_name == "Text" and not isinstance(value, str):
        problem = "Non-text item provided for Text slot"
    elif type_name == "Enum":
        allowed = [e.get("value") for e in enum_values or [] if isinstance(e, dict)]
        if not isinstance(value, str):
            problem = "Non-text item provided for Enum slot"
        elif allowed and value not in allowed:
            problem = f'Wrong value given for Enum slot. Got "{value}", but expected one of the provided enum values'
    elif type_name == "ListOfNumbers" and (not isinstance(value, list) or not all(_php_is_numeric(v) for v in value)):
        problem = "Non-numeric list item provided for ListOfNumbers slot"
    elif type_name == "ListOfTexts" and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
        problem = "Non-text list item provided for ListOfTexts slot"
    if problem is not None:
        raise FakeOcsError(400, f'Failed to validate input key "{key}": {problem}')


# --------------------------------------------------------------------------------------------------------------------
# Response builders
# --------------------------------------------------------------------------------------------------------------------


def _nextcloud_headers(request_id: str, user: str | None = None) -> list[tuple[str, str]]:
    headers = [
        ("X-Request-Id", request_id),
        ("Referrer-Policy", "no-referrer"),
        ("X-Content-Type-Options", "nosniff"),
        ("X-Frame-Options", "SAMEORIGIN"),
        ("X-Permitted-Cross-Domain-Policies", "none"),
        ("Cache-Control", "no-cache, no-store, must-revalidate"),
        ("Content-Security-Policy", "default-src 'none';base-uri 'none';manifest-src 'self';frame-ancestors 'none'"),
        ("X-Robots-Tag", "noindex, nofollow"),
    ]
    if user:
        headers.append(("X-User-Id", user))
    return headers


def _raw_response(status: int, body: bytes, headers: Iterable[tuple[str, str]]) -> Response:
    response = Response(content=body, status_code=status)
    raw = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]
    if status not in (204, 304):
        raw.append((b"content-length", str(len(body)).encode()))
    response.raw_headers = raw
    return response


def _json_response(req: _Req, status: int, data: Any, user: str | None = None) -> Response:
    headers = [*_nextcloud_headers(req.request_id, user), ("Content-Type", "application/json; charset=utf-8")]
    return _raw_response(status, _json_bytes(data), headers)


def ocs_v1_body(data: Any, *, statuscode: int = 100, message: str = "OK") -> JsonDict:
    """An OCS v1 envelope, as AppAPI's endpoints answer (errors mostly with HTTP 200)."""
    meta = {
        "status": "ok" if statuscode == 100 else "failure",
        "statuscode": statuscode,
        "message": message,
        "totalitems": "",
        "itemsperpage": "",
    }
    return {"ocs": {"meta": meta, "data": data}}


def _ocs_v1(req: _Req, data: Any, *, statuscode: int = 100, message: str = "OK", http_status: int = 200) -> Response:
    return _json_response(req, http_status, ocs_v1_body(data, statuscode=statuscode, message=message))


def _ocs_v2(
    req: _Req, data: Any, *, status: int = 200, user: str | None = None, message: str | None = None
) -> Response:
    ok = status < 300
    meta = {"status": "ok" if ok else "failure", "statuscode": status, "message": message or ("OK" if ok else "")}
    return _json_response(req, status, {"ocs": {"meta": meta, "data": data}}, user)


def _ocs_v2_error(req: _Req, error: FakeOcsError, user: str | None = None) -> Response:
    return _ocs_v2(req, {"message": error.message}, status=error.status, user=user)


def _html_404(req: _Req, user: str | None = None) -> Response:
    headers = [*_nextcloud_headers(req.request_id, user), ("Content-Type", "text/html; charset=UTF-8")]
    return _raw_response(404, _NOT_FOUND_PAGE, headers)


# --------------------------------------------------------------------------------------------------------------------
# The fake
# --------------------------------------------------------------------------------------------------------------------


class FakeNextcloud:
    """A fake Nextcloud with AppAPI, for one ExApp. See the module docstring for what it does."""

    def __init__(
        self,
        *,
        app_id: str = "text2image_hub",
        app_secret: str,
        app_version: str = "1.0.0",
        app_url: str | None = None,
        routes: list[tuple[str, str, int]] | None = None,
        trigger_timeout: float = TRIGGER_TIMEOUT_S,
        loglevel: int = 2,
        port: int = 0,
    ) -> None:
        self.app_id = app_id
        self.app_secret = app_secret
        self.app_version = app_version
        self.app_url = app_url
        self.trigger_timeout = trigger_timeout
        self._default_trigger_timeout = trigger_timeout
        self.loglevel = loglevel
        self.accept_language = "en"
        """What AppAPI's calls send as Accept-Language (from occ: the server's default language)."""
        self.admin_password = "admin-password-" + secrets.token_hex(4)
        self.alice_password = "alice-password-" + secrets.token_hex(4)
        self._routes_declared: list[tuple[re.Pattern[str], frozenset[str], int]] = [
            (re.compile(url), frozenset(v.strip().upper() for v in verbs.split(",") if v.strip()), level)
            for url, verbs, level in routes or []
        ]
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._server = ServerThread(self, port=port, name="fake-nextcloud")
        self._client: httpx2.AsyncClient | None = None
        self._route_table = self._build_route_table()
        self._init_done: asyncio.Event | None = None
        self._release: asyncio.Event | None = None
        self._reset_state()

    def _reset_state(self) -> None:
        with self._lock:
            self._failure: str | None = None
            self._scripted: list[_Scripted] = []
            self._hold_seconds = 5.0
            self._enabled = False
            self._init_progress: int | None = None
            self._init_error: str | None = None
            self._providers: dict[str, _Provider] = {}
            self._forms: dict[str, JsonDict] = {}
            self._config: dict[str, _ConfigRow] = {}
            self._ciphertexts: dict[str, str] = {}
            self._preferences: dict[str, str] = {}
            self._languages: dict[str, str] = {}
            self._tasks: dict[int, _Task] = {}
            self._files: dict[int, _File] = {}
            self._logs: list[JsonDict] = []
            self._requests: list[RecordedRequest] = []
            self._app_calls: list[AppCall] = []
            self._progress_history: dict[int, list[float]] = {}
            self._next_ids = {"task": 1, "file": 1, "config": 1, "provider": 1}
            self._call_costs: list[tuple[re.Pattern[str], float]] = []

    # ---- lifecycle -------------------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forgets all state (tasks, files, providers, forms, appconfig, logs, records, enabled flag) and clears
        failure injection; the server keeps running on its port and ``app_url`` is kept."""
        self.set_failure(None)
        self._reset_state()
        self.trigger_timeout = self._default_trigger_timeout

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def port(self) -> int:
        return self._server.port

    def start(self) -> None:
        self._server.start()
        self._server.call(self._open_client())

    def stop(self) -> None:
        if self._server.started and self._failure is not None:
            self.set_failure(None)
        if self._server.started:
            self._server.call(self._close_client())
        self._server.stop()

    def __enter__(self) -> FakeNextcloud:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def _open_client(self) -> None:
        self._client = httpx2.AsyncClient(trust_env=False, timeout=_APP_CALL_TIMEOUT_S)

    async def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # ---- users -----------------------------------------------------------------------------------------------------

    def user_auth(self, user: str) -> tuple[str, str]:
        """``(login, password)`` for HTTP basic auth as ``admin`` or ``alice``."""
        return user, self._users()[user][0]

    def user_headers(self, user: str) -> dict[str, str]:
        login, password = self.user_auth(user)
        token = base64.b64encode(f"{login}:{password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def set_language(self, user: str, language: str) -> None:
        """The user's language setting (Personal settings → Language), as ``/cloud/user`` reports it."""
        with self._lock:
            self._languages[user] = language

    def _users(self) -> dict[str, tuple[str, bool]]:
        return {"admin": (self.admin_password, True), "alice": (self.alice_password, False)}

    def _is_admin(self, user: str | None) -> bool:
        return user is not None and self._users().get(user, ("", False))[1]

    def _basic_user(self, req: _Req) -> tuple[str | None, bool]:
        """(user, credentials were sent but are wrong)."""
        credentials = _basic_credentials(req.headers.get("authorization", ""))
        if credentials is None:
            return None, False
        login, password = credentials
        known = self._users().get(login)
        if known is None or not secrets.compare_digest(known[0].encode(), password.encode()):
            return None, True
        return login, False

    # ---- AppAPI headers --------------------------------------------------------------------------------------------

    def app_headers(self, user: str = "", *, request_id: str = "CLI", accept_language: bool = True) -> dict[str, str]:
        """The headers AppAPI sends with its calls to the ExApp (all but ``GET /heartbeat``)."""
        token = base64.b64encode(f"{user}:{self.app_secret}".encode()).decode()
        headers = {
            "AA-VERSION": APP_API_VERSION,
            "EX-APP-ID": self.app_id,
            "EX-APP-VERSION": self.app_version,
            "AUTHORIZATION-APP-API": token,
            "AA-REQUEST-ID": request_id,
        }
        if accept_language:
            headers["Accept-Language"] = self.accept_language
        headers["User-Agent"] = f"Nextcloud-Server-Crawler/{NEXTCLOUD_VERSION}"
        return headers

    def _app_auth(self, req: _Req) -> str | None:
        """The user of a valid ExApp request ("" for none), or None when AppAPI's authentication fails."""
        token = req.headers.get("authorization-app-api", "")
        user: str | None = None
        valid = False
        if self._failure != "wrong_secret" and req.headers.get("ex-app-id") == self.app_id and token:
            try:
                decoded = base64.b64decode(token, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                decoded = ""
            login, sep, secret = decoded.partition(":")
            user = login or None
            valid = bool(sep) and secrets.compare_digest(secret.encode(), self.app_secret.encode())
        if not valid:
            self._log(3, "app_api", f"Invalid signature for ExApp: {self.app_id} and user: {user or 'null'}.")
            return None
        return user or ""

    # ---- failure injection -----------------------------------------------------------------------------------------

    def answer_next(self, method: str, path: str, status: int, body: Any, *, count: int = 1) -> None:
        """The next ``count`` requests ``method`` to a path matching the regex ``path`` get ``body`` (JSON) with
        ``status`` instead of being processed: a registration that collided (OCS v1 statuscode 996, "Entity which
        should be updated has no id", seen once in 40 registrations on a real server), a malformed answer, …"""
        with self._lock:
            self._scripted.append(_Scripted(method.upper(), re.compile(path), status, body, count))

    def _scripted_answer(self, req: _Req) -> Response | None:
        with self._lock:
            for scripted in self._scripted:
                if scripted.method == req.request.method and scripted.path.search(req.request.url.path):
                    scripted.count -= 1
                    if scripted.count <= 0:
                        self._scripted.remove(scripted)
                    return _json_response(req, scripted.status, scripted.body)
        return None

    def set_failure(self, mode: str | None, *, hold_seconds: float = 5) -> None:
        """Switch failure injection: None, "refuse", "maintenance", "timeout" or "wrong_secret"."""
        if mode is not None and mode not in FAILURE_MODES:
            raise ValueError(f"unknown failure mode {mode!r}")
        with self._lock:
            previous = self._failure
            self._failure = mode
            self._hold_seconds = hold_seconds
        if mode == "timeout" and previous != "timeout":
            self._server.call(self._new_release_event())
        elif previous == "timeout" and mode != "timeout" and self._release is not None:
            self._server.loop.call_soon_threadsafe(self._release.set)
        if mode == "refuse" and previous != "refuse":
            self._server.pause()
        elif previous == "refuse" and mode != "refuse":
            self._server.resume()

    def set_call_costs(self, costs: Mapping[str, float] | None) -> None:
        """Seconds added to each request whose path matches a regex of ``costs`` (searched, in the mapping's order;
        the first match wins), slept before the request is handled; None or ``{}``: no cost (the default)."""
        if costs is not None and any(seconds < 0 for seconds in costs.values()):
            raise ValueError("a call cost must not be negative")
        with self._lock:
            self._call_costs = [(re.compile(path), seconds) for path, seconds in (costs or {}).items()]

    def _call_cost(self, path: str) -> float:
        with self._lock:
            return next((seconds for pattern, seconds in self._call_costs if pattern.search(path)), 0.0)

    async def _new_release_event(self) -> None:
        self._release = asyncio.Event()

    @property
    def failure(self) -> str | None:
        return self._failure

    # ---- inspection ------------------------------------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        """Changes only Nextcloud's record (as after an ExApp restart); ``enable_app()`` calls the ExApp."""
        with self._lock:
            self._enabled = value

    @property
    def init_progress(self) -> int | None:
        return self._init_progress

    @property
    def init_error(self) -> str | None:
        return self._init_error

    @property
    def providers(self) -> dict[str, JsonDict]:
        with self._lock:
            return {pid: copy.deepcopy(p.data) for pid, p in self._providers.items()}

    @property
    def forms(self) -> dict[str, JsonDict]:
        with self._lock:
            return copy.deepcopy(self._forms)

    @property
    def appconfig(self) -> dict[str, JsonDict]:
        """Per key: ``value`` (what the ExApp reads), ``stored`` (the raw row) and ``sensitive`` (0/1)."""
        with self._lock:
            return {
                key: {"value": self._config_read(row), "stored": row.stored, "sensitive": row.sensitive}
                for key, row in self._config.items()
            }

    @property
    def preferences(self) -> dict[str, str]:
        with self._lock:
            return dict(self._preferences)

    @property
    def logs(self) -> list[JsonDict]:
        """What nextcloud.log would hold (entries at or above ``loglevel``): level, app, user, message."""
        with self._lock:
            return copy.deepcopy(self._logs)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def app_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.source == "app"]

    @property
    def app_calls(self) -> list[AppCall]:
        with self._lock:
            return list(self._app_calls)

    @property
    def triggers(self) -> list[str]:
        """Provider ids of every ``/trigger`` call made, in order."""
        prefix = "/trigger?providerId="
        return [
            dict(parse_qsl(c.target.partition("?")[2]))["providerId"]
            for c in self.app_calls
            if c.target.startswith(prefix)
        ]

    @property
    def progress_history(self) -> dict[int, list[float]]:
        """Per task id, every progress value (0..1) the ExApp sent, accepted or not."""
        with self._lock:
            return {k: list(v) for k, v in self._progress_history.items()}

    @property
    def files(self) -> dict[int, bytes]:
        with self._lock:
            return {fid: f.content for fid, f in self._files.items()}

    def task_ids(self) -> list[int]:
        with self._lock:
            return sorted(self._tasks)

    def admin_task(self, task_id: int) -> JsonDict:
        """The task as an admin sees it (``occ taskprocessing:task:get``): the JSON plus ``errorMessage``."""
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                raise FakeOcsError(404, "Task not found")
            return {**self._render(task), "errorMessage": task.error_message}

    # ---- user side (Python API) ------------------------------------------------------------------------------------

    def schedule(
        self,
        input: JsonDict,
        *,
        user: str | None = "alice",
        type_id: str = TEXT2IMAGE,
        app_id: str = "assistant",
        custom_id: str = "",
        include_watermark: bool = True,
    ) -> int:
        """Schedules a task as ``user`` would and returns its id (``/trigger`` is called before this returns)."""
        coro = self._schedule_and_trigger(user, type_id, input, app_id, custom_id, include_watermark)
        return self._server.call(coro)

    async def schedule_async(
        self,
        input: JsonDict,
        *,
        user: str | None = "alice",
        type_id: str = TEXT2IMAGE,
        app_id: str = "assistant",
        custom_id: str = "",
        include_watermark: bool = True,
    ) -> int:
        coro = self._schedule_and_trigger(user, type_id, input, app_id, custom_id, include_watermark)
        return await self._server.call_async(coro)

    def task(self, task_id: int) -> JsonDict:
        """The task JSON as its owner sees it (``GET /task/{id}``); FakeOcsError(404) when it does not exist."""
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                raise FakeOcsError(404, "Task not found")
            return self._render(task)

    def file(self, task_id: int, file_id: int) -> bytes:
        """A result file as the task's owner downloads it."""
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                raise FakeOcsError(404, "Not found")
            return self._task_file(task, file_id).content

    def cancel(self, task_id: int) -> JsonDict:
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                raise FakeOcsError(404, "Not found")
            self._cancel(task)
            return self._render(task)

    def delete(self, task_id: int) -> None:
        with self._lock:
            self._tasks.pop(task_id, None)
            self._tasks_changed()

    def wait_for_task(self, task_id: int, statuses: Iterable[str] = FINAL_STATUSES, timeout: float = 30) -> JsonDict:
        """Polls until the task reaches one of ``statuses``; returns its JSON."""
        wanted = frozenset(statuses)
        deadline = time.monotonic() + timeout
        with self._changed:
            while (current := self.task(task_id))["status"] not in wanted:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"task {task_id} is {current['status']}, not in {sorted(wanted)}")
                self._changed.wait(remaining)
            return current

    async def wait_for_task_async(self, task_id: int, statuses: Iterable[str] = FINAL_STATUSES) -> JsonDict:
        """Polls until the task reaches one of ``statuses``; bound it with ``asyncio.timeout``."""
        wanted = frozenset(statuses)
        loop = asyncio.get_running_loop()
        while True:
            waiter = (loop, asyncio.Event())
            with self._lock:
                current = self.task(task_id)
                if current["status"] in wanted:
                    return current
                self._waiters.add(waiter)
            try:
                await waiter[1].wait()
            finally:
                with self._lock:
                    self._waiters.discard(waiter)

    # ---- admin side (Python API) -----------------------------------------------------------------------------------

    def save_setting(
        self,
        field_id: str,
        value: Any,
        *,
        form_id: str = "admin_settings",
        sensitive: bool | None = None,
        user: str = "admin",
    ) -> None:
        """Saves one form field the way Nextcloud's settings page does (FakeOcsError(403) for a non-admin).

        The page sends ``form_id`` with the first ``"<appid>_"`` removed, so a form id containing it silently
        stores nothing (the form-id trap). ``sensitive`` names the endpoint the page would use (``/value`` or
        ``/value-sensitive``); like AppAPI, the fake lets the field's own ``sensitive`` flag decide the encryption,
        so both endpoints behave alike.
        """
        sent_form_id = form_id.replace(f"{self.app_id}_", "", 1)
        with self._lock:
            self._save_declarative(user, self.app_id, sent_form_id, field_id, value)

    def set_preferred_provider(self, provider_id: str, task_type: str = TEXT2IMAGE) -> None:
        """What the AI admin page stores (``ai.taskprocessing_provider_preferences``)."""
        with self._lock:
            self._preferences[task_type] = provider_id

    # ---- AppAPI side (Python API): registration, enable, disable ---------------------------------------------------

    def register_app(self, timeout: float = 30) -> None:
        """``occ app_api:app:register --wait-finish``: heartbeat, init, and wait until the ExApp is enabled."""
        self._server.call(self._register(timeout), timeout=timeout + 15)

    async def register_app_async(self, limit_s: float = 30) -> None:
        await self._server.call_async(self._register(limit_s))

    def enable_app(self) -> None:
        """``occ app_api:app:enable``: ``GET /heartbeat`` then ``PUT /enabled?enabled=1``."""
        if not self._server.call(self._enable()):
            raise FakeNextcloudError(f"enabling failed: {self._init_error}")

    async def enable_app_async(self) -> None:
        if not await self._server.call_async(self._enable()):
            raise FakeNextcloudError(f"enabling failed: {self._init_error}")

    def disable_app(self) -> None:
        """``occ app_api:app:disable``: ``PUT /enabled?enabled=0``."""
        self._server.call(self._disable())

    async def disable_app_async(self) -> None:
        await self._server.call_async(self._disable())

    # ---- calls to the ExApp ----------------------------------------------------------------------------------------

    async def _call_app(
        self,
        method: str,
        target: str,
        headers: dict[str, str],
        *,
        limit_s: float = _APP_CALL_TIMEOUT_S,
    ) -> httpx2.Response:
        """Calls the ExApp; records the call; raises httpx2.HTTPError when it fails."""
        if self.app_url is None or self._client is None:
            raise httpx2.ConnectError("the fake Nextcloud has no app_url for the ExApp")
        url = self.app_url.rstrip("/") + target
        with self._lock:  # recorded in the order the calls start (they nest)
            index = len(self._app_calls)
            self._app_calls.append(AppCall(method, target, headers, None, "pending"))
        try:
            response = await self._client.request(method, url, headers=headers, content=b"", timeout=limit_s)
        except httpx2.HTTPError as exc:
            with self._lock:
                self._app_calls[index] = AppCall(method, target, headers, None, f"{type(exc).__name__}: {exc}")
            raise
        with self._lock:
            self._app_calls[index] = AppCall(method, target, headers, response.status_code, None)
        return response

    async def _heartbeat(self) -> bool:
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        try:
            response = await self._call_app("GET", "/heartbeat", headers, limit_s=_HEARTBEAT_TIMEOUT_S)
        except httpx2.HTTPError:
            return False
        try:
            return response.status_code == 200 and response.json().get("status") == "ok"
        except ValueError:
            return False

    async def _register(self, limit_s: float) -> None:
        deadline = time.monotonic() + limit_s
        while not await self._heartbeat():
            if time.monotonic() > deadline:
                raise FakeNextcloudError("the ExApp did not answer GET /heartbeat")
            await asyncio.sleep(0.05)
        with self._lock:
            self._init_progress = 0
            self._init_error = None
        self._init_done = asyncio.Event()
        headers = self.app_headers(accept_language=False)
        try:
            response = await self._call_app("POST", "/init", headers)
        except httpx2.HTTPError as exc:
            raise FakeNextcloudError(f"POST /init failed: {exc}") from exc
        if response.status_code == 501:  # no /init: AppAPI enables the ExApp at once
            if not await self._enable():
                raise FakeNextcloudError(f"enabling failed: {self._init_error}")
            return
        if response.status_code != 200:
            raise FakeNextcloudError(f"POST /init answered {response.status_code}")
        try:
            await asyncio.wait_for(self._init_done.wait(), max(0.0, deadline - time.monotonic()))
        except TimeoutError as exc:
            raise FakeNextcloudError(f"init did not finish (progress {self._init_progress})") from exc
        if self._init_error:
            raise FakeNextcloudError(f"init failed: {self._init_error}")
        if not self._enabled:
            raise FakeNextcloudError("init finished but enabling the ExApp failed")

    async def _enable(self) -> bool:
        if not await self._heartbeat():
            self._log(2, "app_api", f"ExApp {self.app_id} heartbeat check failed")
            return False
        try:
            response = await self._call_app("PUT", "/enabled?enabled=1", self.app_headers())
            error = response.json().get("error", "") if response.status_code == 200 else f"HTTP {response.status_code}"
        except (httpx2.HTTPError, ValueError, AttributeError) as exc:
            error = str(exc) or type(exc).__name__
        if error:
            with self._lock:
                self._init_error = str(error)
            self._log(2, "app_api", f"Failed to enable ExApp {self.app_id}: {error}")
            return False
        with self._lock:
            self._enabled = True
        return True

    async def _disable(self) -> None:
        try:
            await self._call_app("PUT", "/enabled?enabled=0", self.app_headers())
        except httpx2.HTTPError as exc:
            self._log(2, "app_api", f"Error during request to ExApp {self.app_id}: {exc}")
        with self._lock:
            self._enabled = False

    async def _trigger(self, provider_id: str) -> None:
        target = f"/trigger?providerId={quote(provider_id, safe='')}"
        try:
            await self._call_app("POST", target, self.app_headers(), limit_s=self.trigger_timeout)
        except httpx2.TimeoutException:
            millis = int(self.trigger_timeout * 1000) + 1
            self._log_app_call_failure(
                target, f"cURL error 28: Operation timed out after {millis} milliseconds with 0 bytes received"
            )
        except httpx2.HTTPError:
            self._log_app_call_failure(target, self._curl7())

    def _curl7(self) -> str:
        host, _, port = (self.app_url or "http://127.0.0.1:0").split("://", 1)[-1].rstrip("/").partition(":")
        return f"cURL error 7: Failed to connect to {host} port {port or 80} after 0 ms: Couldn't connect to server"

    def _log_app_call_failure(self, target: str, curl_error: str) -> None:
        url = (self.app_url or "").rstrip("/") + target
        message = f"{curl_error} {_CURL_HINT} for {url}"
        exception = {"Exception": "GuzzleHttp\\Exception\\ConnectException", "Message": message, "Code": 0}
        self._log(2, "app_api", f"Error during request to ExApp {self.app_id}: {message}", exception=exception)

    # ---- logging ---------------------------------------------------------------------------------------------------

    def _log(self, level: int, app: str, message: str, *, user: str = "--", **extra: Any) -> None:
        if level < self.loglevel:
            return
        with self._lock:
            self._logs.append({"level": level, "app": app, "user": user, "message": message, **extra})

    # ---- state helpers (call with the lock held) -------------------------------------------------------------------

    def _tasks_changed(self) -> None:
        """Wakes up wait_for_task / wait_for_task_async (call with the lock held)."""
        self._changed.notify_all()
        for loop, event in self._waiters:
            with contextlib.suppress(RuntimeError):  # the waiter's loop is already closed
                loop.call_soon_threadsafe(event.set)

    def _next_id(self, kind: str) -> int:
        value = self._next_ids[kind]
        self._next_ids[kind] = value + 1
        return value

    def _render(self, task: _Task, *, fresh: bool = False, started_at: int | None = -1) -> JsonDict:
        """The task JSON. ``fresh``: as the schedule answer shows it (progress null, not read back from the DB)."""
        progress = task.progress if fresh or task.progress is not None else 0.0
        return {
            "id": task.id,
            "type": task.type,
            "lastUpdated": task.last_updated,
            "status": task.status,
            "userId": task.user_id,
            "appId": task.app_id,
            "input": copy.deepcopy(task.input),
            "output": copy.deepcopy(task.output),
            "customId": task.custom_id,
            "completionExpectedAt": task.completion_expected_at,
            "progress": _number(progress),
            "scheduledAt": task.scheduled_at,
            "startedAt": task.started_at if started_at == -1 else started_at,
            "endedAt": task.ended_at,
            "allowCleanup": True,
            "includeWatermark": task.include_watermark,
            "userFacingErrorMessage": task.user_facing_error_message,
        }

    def _visible_providers(self, task_type: str) -> list[_Provider]:
        if not self._enabled:
            return []
        return [p for p in self._providers.values() if p.data.get("task_type") == task_type]

    def _preferred_provider(self, task_type: str) -> _Provider | None:
        visible = self._visible_providers(task_type)
        preferred = self._preferences.get(task_type)
        for provider in visible:
            if provider.id == preferred:
                return provider
        return visible[0] if visible else None

    def _user_task(self, user: str | None, task_id: int, message: str) -> _Task:
        task = self._tasks.get(task_id)
        if task is None or task.user_id != user:
            raise FakeOcsError(404, message)
        return task

    def _task_file(self, task: _Task, file_id: int) -> _File:
        images = (task.output or {}).get("images")
        stored = self._files.get(file_id)
        if not isinstance(images, list) or file_id not in images or stored is None:
            raise FakeOcsError(404, "Not found")
        return stored

    def _cancel(self, task: _Task) -> None:
        if task.status in (STATUS_SCHEDULED, STATUS_RUNNING):
            now = _now()
            task.status = STATUS_CANCELLED
            task.ended_at = now
            task.last_updated = now
            self._tasks_changed()

    def _config_read(self, row: _ConfigRow) -> str:
        if row.sensitive:
            return self._ciphertexts.get(row.stored, "")  # decrypting a non-ciphertext fails: ""
        return row.stored

    def _encrypt(self, plaintext: str) -> str:
        ciphertext = "|".join(
            (secrets.token_hex(32), secrets.token_hex(16), secrets.token_hex(max(64, len(plaintext.encode()))), "3")
        )
        self._ciphertexts[ciphertext] = plaintext
        return ciphertext

    def _config_set(self, key: str, value: str, sensitive: bool | None) -> _ConfigRow:
        """AppAPI's setAppConfigValue: ``sensitive=None`` keeps the flag and stores ``value`` as given."""
        row = self._config.get(key)
        if row is None:
            row = _ConfigRow(id=self._next_id("config"), stored="", sensitive=0)
            self._config[key] = row
        if sensitive is not None:
            row.sensitive = int(sensitive)
        row.stored = self._encrypt(value) if sensitive else value
        return row

    def _save_declarative(self, user: str | None, app: str, form_id: str, field_id: str, value: Any) -> None:
        if user is None:
            raise FakeOcsError(401, "Current user is not logged in")
        form = self._forms.get(form_id) if app == self.app_id else None
        if form is None:
            return  # the form-id trap: nothing matches, nothing is stored, the answer is still 200
        if form.get("section_type") == "admin" and not self._is_admin(user):
            raise FakeOcsError(403, "")
        field = next((f for f in form.get("fields", []) if f.get("id") == field_id), None)
        if field is None:
            return
        text = _setting_string(value)
        if field.get("sensitive"):
            # AppAPI encrypts the value itself and writes it without the sensitive flag (so it reads back as
            # ciphertext) unless the key already exists with the flag set.
            self._config_set(field_id, self._encrypt(text), None)
        else:
            self._config_set(field_id, text, None)

    def _form_with_values(self, form: JsonDict) -> JsonDict:
        fields = []
        for field in form.get("fields", []):
            row = self._config.get(str(field.get("id")))
            if row is None:
                value: Any = field.get("default")
            else:
                value = self._config_read(row)
                if field.get("sensitive"):
                    value = self._ciphertexts.get(value, value)
            fields.append({**field, "value": value})
        return {**form, "fields": fields, "storage_type": "external", "app": self.app_id}

    def _task_type_json(self, task_type: str, provider: _Provider) -> JsonDict:
        definition = _TASK_TYPES[task_type]
        data = provider.data
        optional_shape = {
            str(d.get("name")): {
                "name": d.get("name"),
                "description": d.get("description", ""),
                "type": _SHAPE_TYPE_NAMES.get(int(d.get("shape_type", 1)), "Text"),
            }
            for d in data.get("optional_input_shape") or []
        }
        return {
            "name": definition["name"],
            "description": definition["description"],
            "optionalInputShape": optional_shape,
            "inputShapeEnumValues": data.get("input_shape_enum_values") or {},
            "inputShapeDefaults": data.get("input_shape_defaults") or {},
            "inputShape": copy.deepcopy(definition["inputShape"]),
            "optionalInputShapeEnumValues": data.get("optional_input_shape_enum_values") or {},
            "optionalInputShapeDefaults": data.get("optional_input_shape_defaults") or {},
            "outputShape": copy.deepcopy(definition["outputShape"]),
            "outputShapeEnumValues": data.get("output_shape_enum_values") or {},
            "optionalOutputShape": {},
            "optionalOutputShapeEnumValues": data.get("optional_output_shape_enum_values") or {},
            "isInternal": False,
        }

    # ---- task logic shared by the HTTP endpoints and the Python API ------------------------------------------------

    def _schedule(
        self,
        user: str | None,
        task_type: str,
        raw_input: Any,
        app_id: str,
        custom_id: str,
        include_watermark: bool,
    ) -> tuple[_Task, str | None]:
        """Validates and stores a task; returns it and the provider to trigger (None: no trigger)."""
        with self._lock:
            provider = self._preferred_provider(task_type)
            if provider is None or task_type not in _TASK_TYPES:
                raise FakeOcsError(412, "The given provider is not available")
            if not isinstance(raw_input, dict):
                raise FakeOcsError(400, "Invalid input")
            data = provider.data
            shape = {k: v["type"] for k, v in _TASK_TYPES[task_type]["inputShape"].items()}
            defaults = dict(data.get("input_shape_defaults") or {})
            optional_shape = {
                str(d.get("name")): _SHAPE_TYPE_NAMES.get(int(d.get("shape_type", 1)), "Text")
                for d in data.get("optional_input_shape") or []
            }
            optional_defaults = dict(data.get("optional_input_shape_defaults") or {})
            enum_values = {
                **(data.get("input_shape_enum_values") or {}),
                **(data.get("optional_input_shape_enum_values") or {}),
            }
            for key, type_name in shape.items():
                value = raw_input.get(key)
                if value is None:
                    if key not in defaults:
                        raise FakeOcsError(400, f'Missing key: "{key}"')
                    continue
                _validate_slot(key, type_name, value, enum_values.get(key))
            for key, type_name in optional_shape.items():
                value = raw_input.get(key)
                if value is not None:
                    _validate_slot(key, type_name, value, enum_values.get(key))
            kept = {k: v for k, v in raw_input.items() if k in shape or k in optional_shape}
            now = _now()
            task = _Task(
                id=self._next_id("task"),
                type=task_type,
                user_id=user,
                app_id=app_id,
                input=copy.deepcopy({**defaults, **optional_defaults, **kept}),
                custom_id=custom_id,
                include_watermark=include_watermark,
                scheduled_at=now,
                last_updated=now,
                completion_expected_at=now + int(data.get("expected_runtime") or 0),
            )
            self._tasks[task.id] = task
            self._tasks_changed()
            running = any(t.type == task_type and t.status == STATUS_RUNNING for t in self._tasks.values())
            return task, None if running else provider.id

    async def _schedule_and_trigger(
        self,
        user: str | None,
        task_type: str,
        raw_input: Any,
        app_id: str,
        custom_id: str,
        include_watermark: bool,
    ) -> int:
        task, trigger = self._schedule(user, task_type, raw_input, app_id, custom_id, include_watermark)
        if trigger is not None:
            await self._trigger(trigger)
        return task.id

    def _claim(self, provider_ids: Any, task_types: Any, limit: int) -> tuple[list[tuple[JsonDict, str]], bool]:
        """next_task / next_batch: lock up to ``limit`` SCHEDULED tasks (oldest lastUpdated first)."""
        if not isinstance(provider_ids, list) or not isinstance(task_types, list):
            return [], False
        with self._lock:
            eligible: dict[str, str] = {}
            for task_type in task_types:
                provider = self._preferred_provider(str(task_type))
                if provider is not None and provider.id in provider_ids:
                    eligible[str(task_type)] = provider.id
            candidates = sorted(
                (t for t in self._tasks.values() if t.status == STATUS_SCHEDULED and t.type in eligible),
                key=lambda t: (t.last_updated, t.id),
            )
            claimed = []
            now = _now()
            for task in candidates[: max(limit, 0)]:
                task.status = STATUS_RUNNING
                claimed.append((self._render(task, started_at=None), eligible[task.type]))
                task.started_at = now
            if claimed:
                self._tasks_changed()
            return claimed, len(candidates) > len(claimed)

    def _existing_task(self, task_id: int) -> _Task:
        task = self._tasks.get(task_id)
        if task is None:
            raise FakeOcsError(404, "Not found")
        return task

    def _set_progress(self, task_id: int, progress: Any) -> JsonDict:
        with self._lock:
            task = self._existing_task(task_id)
            if not _php_is_numeric(progress):
                raise FakeOcsError(400, "Invalid progress")
            value = float(progress)
            self._progress_history.setdefault(task_id, []).append(value)
            if task.status != STATUS_CANCELLED:
                if task.status == STATUS_SCHEDULED:
                    task.started_at = _now()
                task.status = STATUS_RUNNING
                task.progress = value
                task.last_updated = _now()
                self._tasks_changed()
            return self._render(task)

    def _store_file(self, task_id: int, content: bytes) -> int:
        with self._lock:
            self._existing_task(task_id)
            file_id = self._next_id("file")
            name = f"{_now()}-{secrets.randbelow(100000) + 1}"
            self._files[file_id] = _File(file_id, task_id, name, content)
            return file_id

    def _set_result(self, task_id: int, output: Any, error: Any, user_facing_error: Any) -> JsonDict:
        with self._lock:
            task = self._existing_task(task_id)
            if task.status == STATUS_CANCELLED:
                return self._render(task)
            now = _now()
            if error is not None:
                task.status = STATUS_FAILED
                task.ended_at = now
                task.error_message = str(error)[:1000]
                task.user_facing_error_message = None if user_facing_error is None else str(user_facing_error)
                self._log(
                    2,
                    "no app in context",
                    f"A TaskProcessing {task.type} task with id {task.id} failed with the following message: {error}",
                )
            elif output is not None:
                task.progress = 1.0
                task.ended_at = now
                images = output.get("images") if isinstance(output, dict) else None
                valid = isinstance(images, list) and all(
                    isinstance(i, int) and not isinstance(i, bool) and i in self._files for i in images
                )
                if valid and isinstance(images, list):
                    task.output = {"images": list(images)}
                    task.status = STATUS_SUCCESSFUL
                else:
                    task.status = STATUS_FAILED
                    task.error_message = _OUTPUT_VALIDATION_ERROR
                    self._log(3, "no app in context", _OUTPUT_VALIDATION_ERROR)
            task.last_updated = now
            self._tasks_changed()
            return self._render(task)

    # ---- the HTTP server -------------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        body = await request.body()
        req = _Req(request, body, {}, dict(parse_qsl(request.url.query, keep_blank_values=True)), _request_id())
        cost = self._call_cost(request.url.path)
        if cost > 0:
            await asyncio.sleep(cost)  # the server's own time per call; other calls go on meanwhile
        response = await self._dispatch(req)
        self._record(req, response.status_code)
        await response(scope, receive, send)

    def _record(self, req: _Req, status: int) -> None:
        headers: dict[str, str] = {}
        for name, value in req.request.headers.items():
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        content_type = headers.get("content-type", "")
        record = RecordedRequest(
            method=req.request.method,
            path=req.request.url.path,
            query=req.query,
            headers=headers,
            json=req.json() if "json" in content_type else None,
            body=req.body,
            status=status,
            source="app" if "ex-app-id" in headers else "user",
        )
        with self._lock:
            self._requests.append(record)

    async def _dispatch(self, req: _Req) -> Response:
        failure = self._failure
        if failure == "timeout":
            release = self._release
            if release is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(release.wait(), self._hold_seconds)
            return _raw_response(504, b"", [("X-Request-Id", req.request_id)])
        scripted = self._scripted_answer(req)
        if scripted is not None:
            return scripted
        path = req.request.url.path
        if failure == "maintenance":
            meta: JsonDict = {"status": "failure", "statuscode": 503, "message": "Service unavailable"}
            if path.startswith("/ocs/v1.php/"):
                meta.update(totalitems="", itemsperpage="")
            headers = [
                *_nextcloud_headers(req.request_id),
                ("X-Nextcloud-Maintenance-Mode", "1"),
                ("Content-Type", "application/json; charset=utf-8"),
            ]
            return _raw_response(503, _json_bytes({"ocs": {"meta": meta, "data": []}}), headers)
        method = req.request.method
        path_known = False
        for route in self._route_table:
            match = route.pattern.fullmatch(path)
            if match is None:
                continue
            path_known = True
            if route.method in (method, "*"):
                req.params = match.groupdict()
                refusal = self._refusal(req, route.auth)
                return refusal if refusal is not None else await route.handler(req)
        if path.startswith("/ocs/"):
            if path_known:
                return _ocs_v2(req, [], status=405)
            return _ocs_v2(req, [], status=404, message="Invalid query, please check the syntax.")
        return _html_404(req)

    def _build_route_table(self) -> list[_Route]:
        app_api = "/ocs/v1.php/apps/app_api"
        tp = "/ocs/v2.php/taskprocessing"
        settings = "/ocs/v2.php/settings/api/declarative"
        table: list[tuple[str, str, Callable[[_Req], Awaitable[Response]], Auth]] = [
            ("GET", r"/ocs/v[12]\.php/cloud/capabilities", self._h_capabilities, Auth.NONE),
            ("POST", app_api + r"/api/v1/ai_provider/task_processing", self._h_provider_register, Auth.APP_OCS_V1),
            ("GET", app_api + r"/api/v1/ai_provider/task_processing", self._h_provider_get, Auth.APP_OCS_V1),
            ("DELETE", app_api + r"/api/v1/ai_provider/task_processing", self._h_provider_unregister, Auth.APP_OCS_V1),
            ("POST", app_api + r"/api/v1/ui/settings", self._h_form_register, Auth.APP_OCS_V1),
            ("GET", app_api + r"/api/v1/ui/settings", self._h_form_get, Auth.APP_OCS_V1),
            ("DELETE", app_api + r"/api/v1/ui/settings", self._h_form_unregister, Auth.APP_OCS_V1),
            ("POST", app_api + r"/api/v1/ex-app/config", self._h_config_set, Auth.APP_OCS_V1),
            ("DELETE", app_api + r"/api/v1/ex-app/config", self._h_config_delete, Auth.APP_OCS_V1),
            ("POST", app_api + r"/api/v1/ex-app/config/get-values", self._h_config_get_values, Auth.APP_OCS_V1),
            ("POST", app_api + r"/api/v1/log", self._h_log, Auth.APP_OCS_V1),
            ("PUT", app_api + r"/ex-app/status", self._h_init_status, Auth.APP_OCS_V1),
            ("GET", app_api + r"/ex-app/state", self._h_state, Auth.APP_OCS_V1),
            ("GET", r"/ocs/v[12]\.php/cloud/user", self._h_current_user, Auth.USER_OR_EXAPP_AS_USER),
            ("GET", tp + r"/tasks_provider/next", self._h_next, Auth.EXAPP_V2),
            ("GET", tp + r"/tasks_provider/next_batch", self._h_next_batch, Auth.EXAPP_V2),
            ("POST", tp + r"/tasks_provider/(?P<task_id>\d+)/progress", self._h_progress, Auth.EXAPP_V2),
            ("POST", tp + r"/tasks_provider/(?P<task_id>\d+)/file", self._h_upload, Auth.EXAPP_V2),
            ("POST", tp + r"/tasks_provider/(?P<task_id>\d+)/result", self._h_result, Auth.EXAPP_V2),
            ("POST", tp + r"/schedule", self._h_schedule, Auth.USER_OR_ANONYMOUS),
            ("GET", tp + r"/task/(?P<task_id>\d+)", self._h_get_task, Auth.USER_OR_ANONYMOUS),
            ("DELETE", tp + r"/task/(?P<task_id>\d+)", self._h_delete_task, Auth.USER),
            ("GET", tp + r"/tasks", self._h_list_tasks, Auth.USER),
            ("GET", tp + r"/tasks/app/(?P<app_id>[^/]+)", self._h_list_tasks, Auth.USER),
            ("GET", tp + r"/tasks/(?P<task_id>\d+)/file/(?P<file_id>\d+)", self._h_download, Auth.USER),
            ("POST", tp + r"/tasks/(?P<task_id>\d+)/cancel", self._h_cancel, Auth.USER),
            ("GET", tp + r"/tasktypes", self._h_task_types, Auth.USER_OR_ANONYMOUS),
            ("GET", tp + r"/queue_stats", self._h_queue_stats, Auth.USER),
            ("POST", settings + r"/value", self._h_setting_value, Auth.USER),
            ("POST", settings + r"/value-sensitive", self._h_setting_value, Auth.USER),
            ("GET", settings + r"/forms", self._h_forms, Auth.USER),
            ("PUT", r"/index.php/settings/api/admin/ai", self._h_admin_ai, Auth.ADMIN),
            ("*", r"/index.php/apps/app_api/proxy/(?P<app_id>[^/]+)(?P<rest>/.*)?", self._h_proxy, Auth.PROXY),
        ]
        return [_Route(method, re.compile(pattern), handler, auth) for method, pattern, handler, auth in table]

    def _refusal(self, req: _Req, auth: Auth) -> Response | None:
        """Checks the caller against the route's ``auth`` (setting ``req.user``): the answer that refuses it, or
        None to let the handler answer."""
        if auth is Auth.NONE:
            return None
        if auth is Auth.APP_OCS_V1:
            return self._app_api_denied(req) if self._app_auth(req) is None else None
        if auth is Auth.EXAPP_V2:
            return self._exapp_required(req) if self._app_auth(req) is None else None
        if auth is Auth.USER_OR_EXAPP_AS_USER and "authorization-app-api" in req.headers:
            req.user = self._app_auth(req) or None
            return self._not_logged_in(req) if req.user not in self._users() else None
        req.user, wrong_login = self._basic_user(req)
        if auth is Auth.USER_OR_ANONYMOUS:
            return self._not_logged_in(req) if wrong_login else None
        if auth in (Auth.USER, Auth.USER_OR_EXAPP_AS_USER):
            return self._not_logged_in(req) if req.user is None else None
        if auth is Auth.ADMIN:
            if req.user is None:
                return _json_response(req, 401, {"message": "Current user is not logged in"})
            if not self._is_admin(req.user):
                return _json_response(req, 403, {"message": "Logged in account must be an admin"}, req.user)
        return None  # Auth.ADMIN passed, or Auth.PROXY

    # ---- ExApp -> Nextcloud: core and AppAPI -----------------------------------------------------------------------

    async def _h_capabilities(self, req: _Req) -> Response:
        data = {
            "version": {
                "major": 34,
                "minor": 0,
                "micro": 1,
                "string": NEXTCLOUD_VERSION,
                "edition": "",
                "extendedSupport": False,
            },
            "capabilities": {
                "bruteforce": {"delay": 0, "allow-listed": False},
                "app_api": {"version": APP_API_VERSION},
                "theming": {
                    "name": "Nextcloud",
                    "productName": "Nextcloud",
                    "url": "https://nextcloud.com",
                    "slogan": "a safe home for all your data",
                    "color": "#00679e",
                    "logo": f"{self.url}/core/img/logo/logo.svg?v=0",
                },
            },
        }
        if req.request.url.path.startswith("/ocs/v2.php/"):
            return _ocs_v2(req, data)
        return _ocs_v1(req, data)

    def _app_api_denied(self, req: _Req) -> Response:
        meta_message = "AppAPI authentication failed"
        return _ocs_v1(req, [], statuscode=997, message=meta_message, http_status=401)

    async def _h_provider_register(self, req: _Req) -> Response:
        provider = req.json_object().get("provider")
        if not isinstance(provider, dict) or not provider.get("id"):
            return _ocs_v1(req, [], statuscode=400, message="Invalid provider")
        with self._lock:
            existing = self._providers.get(str(provider["id"]))
            row_id = existing.row_id if existing else self._next_id("provider")
            self._providers[str(provider["id"])] = _Provider(row_id, copy.deepcopy(provider))
        return _ocs_v1(req, [])

    async def _h_provider_get(self, req: _Req) -> Response:
        with self._lock:
            provider = self._providers.get(req.query.get("name", ""))
            if provider is None:
                return _ocs_v1(req, [], statuscode=404, message="")
            data = {
                "id": provider.row_id,
                "app_id": self.app_id,
                "name": provider.id,
                "display_name": provider.data.get("name", ""),
                "task_type": provider.data.get("task_type", ""),
                "provider": json.dumps(_phpify_empty(provider.data), separators=(",", ":")),
                "custom_task_type": "null",
            }
        return _ocs_v1(req, data)

    async def _h_provider_unregister(self, req: _Req) -> Response:
        with self._lock:
            removed = self._providers.pop(req.query.get("name", ""), None)
        if removed is None:
            return _ocs_v1(req, [], statuscode=404, message="")
        return _ocs_v1(req, [])

    async def _h_form_register(self, req: _Req) -> Response:
        scheme = req.json_object().get("formScheme")
        if not isinstance(scheme, dict) or not scheme.get("id"):
            return _ocs_v1(req, [], statuscode=400, message="Invalid form scheme")
        with self._lock:
            self._forms[str(scheme["id"])] = copy.deepcopy(scheme)
        return _ocs_v1(req, [])

    async def _h_form_get(self, req: _Req) -> Response:
        with self._lock:
            form = self._forms.get(req.query.get("formId", ""))
            if form is None:
                return _ocs_v1(req, [], statuscode=404, message="")
            data = {**copy.deepcopy(form), "storage_type": "external"}
        return _ocs_v1(req, data)

    async def _h_form_unregister(self, req: _Req) -> Response:
        with self._lock:
            removed = self._forms.pop(req.query.get("formId", ""), None)
        if removed is None:
            return _ocs_v1(req, [], statuscode=404, message="")
        return _ocs_v1(req, [])

    async def _h_config_set(self, req: _Req) -> Response:
        body = req.json_object()
        key = body.get("configKey")
        if not isinstance(key, str) or not key:
            return _ocs_v1(req, [], statuscode=400, message="Config key cannot be empty")
        value = _setting_string(body.get("configValue", ""))
        sensitive = body.get("sensitive")
        with self._lock:
            row = self._config_set(key, value, None if sensitive is None else bool(sensitive))
            data = {
                "id": row.id,
                "appid": self.app_id,
                "configkey": key,
                "configvalue": value,
                "sensitive": row.sensitive,
            }
        return _ocs_v1(req, data)

    async def _h_config_get_values(self, req: _Req) -> Response:
        keys = req.json_object().get("configKeys")
        wanted = {str(k) for k in keys} if isinstance(keys, list) else set()
        with self._lock:
            data = [
                {"configkey": key, "configvalue": self._config_read(self._config[key])}
                for key in sorted(wanted & self._config.keys())
            ]
        return _ocs_v1(req, data)

    async def _h_config_delete(self, req: _Req) -> Response:
        keys = req.json_object().get("configKeys")
        with self._lock:
            deleted = [self._config.pop(str(k)) for k in keys or [] if str(k) in self._config]
        if not deleted:
            return _ocs_v1(req, [], statuscode=404, message="No appconfig_ex values deleted")
        return _ocs_v1(req, len(deleted))

    async def _h_log(self, req: _Req) -> Response:
        body = req.json_object()
        level = body.get("level")
        if not isinstance(level, int) or not 0 <= level <= 4:
            return _ocs_v1(req, [], statuscode=400, message="Invalid log level")
        self._log(level, self.app_id, str(body.get("message", "")))
        return _ocs_v1(req, [])

    async def _h_init_status(self, req: _Req) -> Response:
        body = req.json_object()
        progress = body.get("progress")
        error = str(body.get("error") or "")
        if not isinstance(progress, int):
            return _ocs_v1(req, [], statuscode=400, message="Invalid progress")
        with self._lock:
            self._init_progress = progress
        if error:
            with self._lock:
                self._init_error = error
            self._log(3, "app_api", f"ExApp {self.app_id} initialization failed. Error: {error}")
        elif progress >= 100:
            await self._enable()  # nested: heartbeat + /enabled?enabled=1 before this request is answered
        if (error or progress >= 100) and self._init_done is not None:
            self._init_done.set()
        return _ocs_v1(req, [])

    async def _h_state(self, req: _Req) -> Response:
        return _ocs_v1(req, 1 if self._enabled else 0)

    async def _h_current_user(self, req: _Req) -> Response:
        """The caller's own details (Provisioning API): an ExApp acting as a user (AppAPI auth with a user id) or a
        user with basic auth. ``language`` is the user's setting, else the installation's default (``en``)."""
        user = str(req.user)
        with self._lock:
            language = self._languages.get(user, "en")
        data = {
            "enabled": True,
            "id": user,
            "lastLogin": _now() * 1000,
            "backend": "Database",
            "subadmin": [],
            "quota": {"quota": "none", "used": 0},
            "email": None,
            "displayname": user,
            "display-name": user,
            "groups": ["admin"] if self._is_admin(user) else [],
            "language": language,
            "locale": "",
            "backendCapabilities": {"setDisplayName": True, "setPassword": True},
        }
        if req.request.url.path.startswith("/ocs/v2.php/"):
            return _ocs_v2(req, data, user=user)
        return _ocs_v1(req, data)

    # ---- ExApp -> Nextcloud: TaskProcessing provider endpoints -----------------------------------------------------

    def _exapp_required(self, req: _Req) -> Response:
        headers = [*_nextcloud_headers(req.request_id), ("Content-Type", "application/json; charset=utf-8")]
        return _raw_response(412, _json_bytes({"message": "ExApp required"}), headers)

    async def _h_next(self, req: _Req) -> Response:
        body = req.json_object()
        claimed, _ = self._claim(body.get("providerIds"), body.get("taskTypeIds"), 1)
        if not claimed:
            headers = [*_nextcloud_headers(req.request_id), ("Content-Type", "application/json; charset=utf-8")]
            return _raw_response(204, b"", headers)
        task, provider_id = claimed[0]
        return _ocs_v2(req, {"task": task, "provider": {"name": provider_id}})

    async def _h_next_batch(self, req: _Req) -> Response:
        body = req.json_object()
        number = body.get("numberOfTasks", 1)
        limit = number if isinstance(number, int) and not isinstance(number, bool) else 1
        claimed, has_more = self._claim(body.get("providerIds"), body.get("taskTypeIds"), limit)
        tasks = [{"task": task, "provider": provider_id} for task, provider_id in claimed]
        return _ocs_v2(req, {"tasks": tasks, "has_more": has_more})

    async def _h_progress(self, req: _Req) -> Response:
        try:
            task = self._set_progress(int(req.params["task_id"]), req.json_object().get("progress"))
        except FakeOcsError as exc:
            return _ocs_v2_error(req, exc)
        return _ocs_v2(req, {"task": task})

    async def _h_upload(self, req: _Req) -> Response:
        task_id = int(req.params["task_id"])
        with self._lock:
            if task_id not in self._tasks:
                return _ocs_v2_error(req, FakeOcsError(404, "Not found"))
        form = await req.request.form()
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                return _ocs_v2_error(req, FakeOcsError(400, "Bad request"))
            content = await upload.read()
        finally:
            await form.close()
        try:
            file_id = self._store_file(task_id, content)
        except FakeOcsError as exc:
            return _ocs_v2_error(req, exc)
        return _ocs_v2(req, {"fileId": file_id}, status=201)

    async def _h_result(self, req: _Req) -> Response:
        body = req.json_object()
        try:
            task = self._set_result(
                int(req.params["task_id"]),
                body.get("output"),
                body.get("errorMessage"),
                body.get("userFacingErrorMessage"),
            )
        except FakeOcsError as exc:
            return _ocs_v2_error(req, exc)
        return _ocs_v2(req, {"task": task})

    # ---- users -> Nextcloud ----------------------------------------------------------------------------------------

    def _not_logged_in(self, req: _Req) -> Response:
        meta = {"status": "failure", "statuscode": 997, "message": "Current user is not logged in"}
        return _json_response(req, 401, {"ocs": {"meta": meta, "data": []}})

    async def _h_schedule(self, req: _Req) -> Response:
        user = req.user
        body = req.json_object()
        task_type = body.get("type")
        if not isinstance(task_type, str) or not isinstance(body.get("appId"), str):
            return _ocs_v2(req, {"message": "Missing parameter"}, status=400, user=user)
        watermark = body.get("includeWatermark", True)
        try:
            task, trigger = self._schedule(
                user,
                task_type,
                body.get("input"),
                str(body["appId"]),
                str(body.get("customId") or ""),
                bool(watermark) if watermark is not None else True,
            )
        except FakeOcsError as exc:
            return _ocs_v2_error(req, exc, user)
        with self._lock:
            rendered = self._render(task, fresh=True)
        if trigger is not None:
            await self._trigger(trigger)  # synchronously, before the user gets the answer
        return _ocs_v2(req, {"task": rendered}, user=user)

    async def _h_get_task(self, req: _Req) -> Response:
        user = req.user
        try:
            with self._lock:
                task = self._render(self._user_task(user, int(req.params["task_id"]), "Task not found"))
        except FakeOcsError as exc:
            return _ocs_v2_error(req, exc, user)
        return _ocs_v2(req, {"task": task}, user=user)

    async def _h_delete_task(self, req: _Req) -> Response:
        user = req.user
        with self._lock:
            task = self._tasks.get(int(req.params["task_id"]))
            if task is not None and task.user_id == user:
                del self._tasks[task.id]
                self._tasks_changed()
        return _ocs_v2(req, None, user=user)

    async def _h_list_tasks(self, req: _Req) -> Response:
        user = req.user
        app_id = req.params.get("app_id")
        task_type = req.query.get("taskType")
        custom_id = req.query.get("customId")
        with self._lock:
            tasks = [
                self._render(t)
                for t in sorted(self._tasks.values(), key=lambda t: t.id)
                if t.user_id == user
                and (app_id is None or t.app_id == app_id)
                and (not task_type or t.type == task_type)
                and (custom_id is None or t.custom_id == custom_id)
            ]
        return _ocs_v2(req, {"tasks": tasks}, user=user)

    async def _h_download(self, req: _Req) -> Response:
        user = req.user
        try:
            with self._lock:
                task = self._user_task(user, int(req.params["task_id"]), "Not found")
                stored = self._task_file(task, int(req.params["file_id"]))
        except FakeOcsError as exc:
            return _ocs_v2_error(req, exc, user)
        headers = [
            *_nextcloud_headers(req.request_id, user),
            ("Content-Disposition", f'attachment; filename="{stored.name}"'),
            ("Content-Type", _sniff_content_type(stored.content)),
        ]
        return _raw_response(200, stored.content, headers)

    async def _h_cancel(self, req: _Req) -> Response:
        user = req.user
        try:
            with self._lock:
                task = self._user_task(user, int(req.params["task_id"]), "Not found")
                self._cancel(task)
                rendered = self._render(task)
        except FakeOcsError as exc:
            return _ocs_v2_error(req, exc, user)
        return _ocs_v2(req, {"task": rendered}, user=user)

    async def _h_task_types(self, req: _Req) -> Response:
        user = req.user
        with self._lock:
            types = {}
            for task_type in _TASK_TYPES:
                provider = self._preferred_provider(task_type)
                if provider is not None:
                    types[task_type] = self._task_type_json(task_type, provider)
        return _ocs_v2(req, {"types": types or []}, user=user)

    async def _h_queue_stats(self, req: _Req) -> Response:
        user = req.user
        with self._lock:
            statuses = [t.status for t in self._tasks.values()]
        data = {"scheduled_count": statuses.count(STATUS_SCHEDULED), "running_count": statuses.count(STATUS_RUNNING)}
        return _ocs_v2(req, data, user=user)

    async def _h_setting_value(self, req: _Req) -> Response:
        user = req.user
        body = req.json_object()
        try:
            with self._lock:
                self._save_declarative(
                    user,
                    str(body.get("app", "")),
                    str(body.get("formId", "")),
                    str(body.get("fieldId", "")),
                    body.get("value"),
                )
        except FakeOcsError as exc:
            return _ocs_v2(req, [], status=exc.status, user=user)
        return _ocs_v2(req, None, user=user)

    async def _h_forms(self, req: _Req) -> Response:
        user = req.user
        admin = self._is_admin(user)
        with self._lock:
            forms = [
                self._form_with_values(form)
                for form in self._forms.values()
                if form.get("section_type") != "admin" or admin
            ]
        return _ocs_v2(req, forms, user=user)

    async def _h_admin_ai(self, req: _Req) -> Response:
        settings = req.json_object().get("settings")
        preferences = settings.get("ai.taskprocessing_provider_preferences") if isinstance(settings, dict) else None
        if isinstance(preferences, dict):
            with self._lock:
                self._preferences.update({str(k): str(v) for k, v in preferences.items()})
        return _json_response(req, 200, [], req.user)

    # ---- the AppAPI proxy ------------------------------------------------------------------------------------------

    async def _h_proxy(self, req: _Req) -> Response:
        user = req.user
        rest = req.params.get("rest") or "/"
        raw_path = req.request.scope.get("raw_path") or b""
        segments = rest.split("/") + raw_path.decode("latin-1").split("/")
        if req.params.get("app_id") != self.app_id or not self._enabled or ".." in segments:
            return _html_404(req, user)
        route = next(
            (
                (verbs, level)
                for pattern, verbs, level in self._routes_declared
                if pattern.search(rest) or pattern.search(rest.lstrip("/"))
            ),
            None,
        )
        if route is None or req.request.method not in route[0]:
            return _html_404(req, user)
        level = route[1]
        if (level == USER and user is None) or (level == ADMIN and not self._is_admin(user)):
            return _html_404(req, user)
        return await self._forward(req, rest, user)

    async def _forward(self, req: _Req, path: str, user: str | None) -> Response:
        target = path + (f"?{req.request.url.query}" if req.request.url.query else "")
        headers = [
            (name, value)
            for name, value in req.request.headers.items()
            if name not in ("host", "content-length", "transfer-encoding")
        ]
        client_host = req.request.client.host if req.request.client else "127.0.0.1"
        headers.append(("x-origin-ip", client_host))
        app_headers = self.app_headers(user or "", request_id=req.request_id)
        app_headers.pop("User-Agent")
        headers.extend(app_headers.items())
        failure_headers = [*_nextcloud_headers(req.request_id, user), ("Content-Type", "text/html; charset=UTF-8")]
        if self.app_url is None or self._client is None:
            return _raw_response(500, b"", failure_headers)
        url = self.app_url.rstrip("/") + target
        try:
            outbound = self._client.build_request(req.request.method, url, headers=headers, content=req.body)
            response = await self._client.send(outbound, stream=True)
            try:
                content = b"".join([chunk async for chunk in response.aiter_raw()])
            finally:
                await response.aclose()
        except httpx2.HTTPError as exc:
            with self._lock:
                self._app_calls.append(AppCall(req.request.method, target, dict(headers), None, repr(exc)))
            curl = self._curl7() if isinstance(exc, httpx2.ConnectError) else "cURL error 28: Operation timed out"
            self._log_app_call_failure(target, curl)
            return _raw_response(500, b"", failure_headers)
        with self._lock:
            self._app_calls.append(AppCall(req.request.method, target, dict(headers), response.status_code, None))
        passed = [
            (name, value)
            for name, value in response.headers.multi_items()
            if name.lower() not in ("content-length", "transfer-encoding", "connection", "keep-alive")
        ]
        return _raw_response(response.status_code, content, [*_nextcloud_headers(req.request_id, user), *passed])
