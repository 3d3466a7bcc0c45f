"""Tests of the fake Nextcloud against the recorded Nextcloud 34.0.1 exchanges in tests/fixtures/contract/.

The fake is driven by the real nc_py_api client (AsyncNextcloudApp), by plain HTTP as users and by a small stand-in
ExApp (FastAPI) that answers /heartbeat, /init, /enabled, /trigger and echoes proxied routes.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import re
import socket
import struct
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import niquests
import pytest
from fastapi import BackgroundTasks, FastAPI, Request
from fastapi.responses import JSONResponse
from nc_py_api import AsyncNextcloudApp, NextcloudException
from nc_py_api.ex_app.defs import LogLvl
from nc_py_api.ex_app.providers.task_processing import ShapeDescriptor, ShapeType, TaskProcessingProvider
from nc_py_api.ex_app.ui.settings import SettingsField, SettingsFieldType, SettingsForm

from tests.fake_nextcloud import (
    ADMIN,
    PUBLIC,
    STATUS_CANCELLED,
    STATUS_FAILED,
    STATUS_RUNNING,
    STATUS_SCHEDULED,
    STATUS_SUCCESSFUL,
    USER,
    FakeNextcloud,
    FakeOcsError,
)
from tests.servers import ServerThread

FIXTURES = Path(__file__).parent / "fixtures" / "contract"
APP_ID = "text2image_hub"
APP_SECRET = "fake-nextcloud-test-secret"
LOCAL = "text2image_hub:local"
REMOTE = "text2image_hub:remote"
ROUTES = [(r"^/v1/.*", "GET,POST", PUBLIC), (r"^user\/.*", "GET,POST", USER), (r"^/admin/.*", "GET,POST", ADMIN)]
TIMESTAMPS = ("lastUpdated", "scheduledAt", "startedAt", "endedAt")

PROVIDER = TaskProcessingProvider(
    id=LOCAL,
    name="text2image hub (local)",
    task_type="core:text2image",
    expected_runtime=30,
    optional_input_shape=[
        ShapeDescriptor(name="size", description="Image size, WIDTHxHEIGHT", shape_type=ShapeType.TEXT),
        ShapeDescriptor(name="seed", description="Random seed", shape_type=ShapeType.NUMBER),
        ShapeDescriptor(name="negative_prompt", description="What to avoid in the image", shape_type=ShapeType.TEXT),
    ],
    input_shape_defaults={"numberOfImages": 1},
    optional_input_shape_defaults={"size": "1024x1024"},
)
REMOTE_PROVIDER = TaskProcessingProvider(
    id=REMOTE, name="text2image hub (remote)", task_type="core:text2image", expected_runtime=120
)
FORM = SettingsForm(
    id="admin_settings",
    section_type="admin",
    section_id="ai",
    title="text2image hub",
    description="Backend used to generate images",
    fields=[
        SettingsField(
            id="backend",
            title="Backend",
            type=SettingsFieldType.SELECT,
            default="local",
            options=[
                {"name": "Local GPU (diffusers)", "value": "local"},
                {"name": "Remote OpenAI-compatible API", "value": "remote"},
            ],
        ),
        SettingsField(
            id="remote_base_url",
            title="Remote API base URL",
            type=SettingsFieldType.TEXT,
            default="https://openai.inference.de-txl.ionos.com/v1",
            options=[],
            placeholder="https://\u2026/v1",
        ),
        SettingsField(
            id="remote_api_key",
            title="Remote API key",
            type=SettingsFieldType.PASSWORD,
            default="",
            options=[],
            sensitive=True,
        ),
    ],
)


# --------------------------------------------------------------------------------------------------------------------
# Recordings
# --------------------------------------------------------------------------------------------------------------------


@functools.cache
def contract(number: str) -> dict[str, Any]:
    (path,) = FIXTURES.glob(f"scenario-{number}-*.json")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def recorded(number: str, method: str, path: str, *, step: str = "", index: int = 0) -> dict[str, Any]:
    """The ``index``-th recorded exchange with this method and path (in a step whose title contains ``step``)."""
    found = [
        ex
        for st in contract(number)["steps"]
        if step in st["step"]
        for ex in st["exchanges"]
        if ex["request"]["method"] == method and ex["request"]["path"] == path
    ]
    exchange: dict[str, Any] = found[index]
    return exchange


def body_json(message: dict[str, Any]) -> Any:
    assert message["body"]["encoding"] == "json"
    return message["body"]["json"]


def header(message: dict[str, Any], name: str) -> str:
    return next(str(value) for key, value in message["headers"] if key.lower() == name.lower())


def header_names(message: dict[str, Any]) -> set[str]:
    return {key.lower() for key, _ in message["headers"]}


def normalized(value: Any) -> Any:
    """Replaces what differs between runs (times; completionExpectedAt becomes its offset from scheduledAt)."""
    if isinstance(value, list):
        return [normalized(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {k: normalized(v) for k, v in value.items()}
    for key in TIMESTAMPS:
        if out.get(key) is not None:
            out[key] = "<time>"
    if isinstance(value.get("completionExpectedAt"), int) and isinstance(value.get("scheduledAt"), int):
        out["completionExpectedAt"] = value["completionExpectedAt"] - value["scheduledAt"]
    return out


def without_ids(value: Any) -> Any:
    if isinstance(value, list):
        return [without_ids(v) for v in value]
    if isinstance(value, dict):
        return {k: "<id>" if k in ("id", "fileId") else without_ids(v) for k, v in value.items()}
    return value


def png(length: int = 300) -> bytes:
    """A real PNG of a 1x1 pixel, padded with an ancillary chunk to ``length`` bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    head = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
    tail = chunk(b"IDAT", zlib.compress(b"\x00\x00")) + chunk(b"IEND", b"")
    padding = max(0, length - len(head) - len(tail) - 12)
    return head + chunk(b"tEXt", b"c" * padding) + tail


# --------------------------------------------------------------------------------------------------------------------
# A stand-in ExApp that uses the real nc_py_api client
# --------------------------------------------------------------------------------------------------------------------


class StandInExApp:
    """Answers AppAPI's calls like an nc_py_api ExApp and records what it received."""

    def __init__(self, nextcloud_url: str) -> None:
        self.nextcloud_url = nextcloud_url
        self.events: list[str] = []
        self.received: list[tuple[str, str, list[tuple[str, str]], bytes]] = []
        self.trigger_delay = 0.0
        self.app = FastAPI()
        self._add_routes()
        self.server = ServerThread(self.app, name="stand-in-exapp")

    @property
    def url(self) -> str:
        return self.server.url

    def reset(self) -> None:
        self.events.clear()
        self.received.clear()
        self.trigger_delay = 0.0

    def nc(self) -> AsyncNextcloudApp:
        return new_nc(self.nextcloud_url)

    def headers_of(self, target: str) -> dict[str, str]:
        _, _, headers, _ = next(r for r in self.received if r[1] == target)
        return {k.lower(): v for k, v in headers}

    async def _record(self, request: Request) -> None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raw_headers = [(k.decode(), v.decode()) for k, v in request.headers.raw]
        self.received.append((request.method, target, raw_headers, await request.body()))

    def _add_routes(self) -> None:
        app = self.app

        @app.get("/heartbeat")
        async def heartbeat(request: Request) -> JSONResponse:
            await self._record(request)
            self.events.append("heartbeat")
            return JSONResponse({"status": "ok"})

        @app.post("/init")
        async def init(request: Request, background: BackgroundTasks) -> JSONResponse:
            await self._record(request)
            self.events.append("init")
            background.add_task(self._report_init_done)
            return JSONResponse({})

        @app.put("/enabled")
        async def enabled(request: Request, enabled: bool) -> JSONResponse:
            await self._record(request)
            self.events.append(f"enabled={int(enabled)}")
            nc = self.nc()
            try:
                if enabled:
                    await nc.providers.task_processing.register(PROVIDER)
                    await nc.ui.settings.register_form(FORM)
                    self.events.append("registered")
                else:
                    await nc.providers.task_processing.unregister(LOCAL)
                    await nc.ui.settings.unregister_form(FORM.id)
                    self.events.append("unregistered")
            finally:
                await close_nc(nc)
            return JSONResponse({"error": ""})

        @app.post("/trigger")
        async def trigger(request: Request, providerId: str) -> JSONResponse:
            await self._record(request)
            self.events.append(f"trigger:{providerId}")
            await asyncio.sleep(self.trigger_delay)
            return JSONResponse({})

        @app.api_route("/{path:path}", methods=["GET", "POST"])
        async def echo(request: Request, path: str) -> JSONResponse:
            await self._record(request)
            body = await request.body()
            return JSONResponse(
                {"route": f"/{path}", "query": request.url.query, "body": body.decode()},
                headers={"X-Echo": "yes"},
            )

    async def _report_init_done(self) -> None:
        nc = self.nc()
        try:
            await nc.set_init_status(100)
        finally:
            await close_nc(nc)
        self.events.append("init_status_answered")


def new_nc(url: str, *, secret: str = APP_SECRET, timeout: float = 5) -> AsyncNextcloudApp:
    return AsyncNextcloudApp(
        nextcloud_url=url, app_id=APP_ID, app_secret=secret, app_version="1.0.0", npa_timeout=timeout
    )


async def close_nc(nc: AsyncNextcloudApp) -> None:
    adapter = getattr(nc._session, "adapter", None)
    if adapter is not None:
        await adapter.close()


# --------------------------------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeNextcloud]:
    with FakeNextcloud(app_id=APP_ID, app_secret=APP_SECRET, routes=ROUTES) as server:
        yield server


@pytest.fixture(scope="module")
def stand_in(fake_server: FakeNextcloud) -> Iterator[StandInExApp]:
    app = StandInExApp(fake_server.url)
    with app.server:
        yield app


@pytest.fixture
def fake(fake_server: FakeNextcloud) -> FakeNextcloud:
    fake_server.reset()
    return fake_server


@pytest.fixture
def exapp(fake: FakeNextcloud, stand_in: StandInExApp) -> StandInExApp:
    stand_in.reset()
    fake.app_url = stand_in.url
    return stand_in


@pytest.fixture
def registered(fake: FakeNextcloud, exapp: StandInExApp) -> FakeNextcloud:
    fake.register_app(timeout=10)
    return fake


@pytest.fixture
async def nc(fake: FakeNextcloud) -> AsyncIterator[AsyncNextcloudApp]:
    client = new_nc(fake.url)
    yield client
    await close_nc(client)


@pytest.fixture
async def http(fake: FakeNextcloud) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=fake.url, trust_env=False, timeout=10) as client:
        yield client


def app_api_headers(secret: str = APP_SECRET) -> dict[str, str]:
    token = base64.b64encode(f":{secret}".encode()).decode()
    return {"EX-APP-ID": APP_ID, "EX-APP-VERSION": "1.0.0", "AUTHORIZATION-APP-API": token, "OCS-APIREQUEST": "true"}


def eventually(condition: Callable[[], bool], limit_s: float = 5) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --------------------------------------------------------------------------------------------------------------------
# Registration, enable, disable (scenario 01)
# --------------------------------------------------------------------------------------------------------------------


def test_register_app_enables_inside_the_init_status_request(registered: FakeNextcloud, exapp: StandInExApp) -> None:
    assert registered.enabled
    eventually(lambda: "init_status_answered" in exapp.events)
    assert exapp.events == ["heartbeat", "init", "heartbeat", "enabled=1", "registered", "init_status_answered"]
    assert [(c.method, c.target) for c in registered.app_calls] == [
        ("GET", "/heartbeat"),
        ("POST", "/init"),
        ("GET", "/heartbeat"),
        ("PUT", "/enabled?enabled=1"),
    ]
    status_put = next(r for r in registered.requests if r.path.endswith("/ex-app/status"))
    rec = recorded("01", "PUT", "/ocs/v1.php/apps/app_api/ex-app/status")
    assert status_put.json == body_json(rec["request"])
    assert status_put.status == rec["response"]["status"]
    assert set(registered.providers) == {LOCAL}
    assert (
        registered.providers[LOCAL]
        == body_json(recorded("01", "POST", "/ocs/v1.php/apps/app_api/api/v1/ai_provider/task_processing")["request"])[
            "provider"
        ]
    )


def test_app_calls_carry_appapi_headers_as_recorded(registered: FakeNextcloud, exapp: StandInExApp) -> None:
    for target in ("/heartbeat", "/init", "/enabled?enabled=1"):
        method = {"/heartbeat": "GET", "/init": "POST"}.get(target, "PUT")
        rec = recorded("01", method, target.partition("?")[0])["request"]
        appapi = {"aa-version", "ex-app-id", "ex-app-version", "authorization-app-api", "aa-request-id"}
        got = exapp.headers_of(target)
        assert appapi & set(got) == appapi & header_names(rec)
        assert ("accept-language" in got) == ("accept-language" in header_names(rec))
        for name in appapi & header_names(rec):
            if name != "authorization-app-api":
                assert got[name] == header(rec, name)
    token = exapp.headers_of("/init")["authorization-app-api"]
    assert base64.b64decode(token).decode() == f":{APP_SECRET}"


async def test_exapp_reads_back_provider_form_and_state_as_recorded(
    registered: FakeNextcloud, nc: AsyncNextcloudApp
) -> None:
    raw = await nc._session.ocs(
        "GET", "/ocs/v1.php/apps/app_api/api/v1/ai_provider/task_processing", params={"name": LOCAL}
    )
    rec = recorded("01", "GET", "/ocs/v1.php/apps/app_api/api/v1/ai_provider/task_processing")
    assert without_ids(raw) == without_ids(body_json(rec["response"])["ocs"]["data"])
    form = await nc.ui.settings.get_entry("admin_settings")
    assert form is not None
    assert form.to_dict() == FORM.to_dict()
    rec_form = recorded("01", "GET", "/ocs/v1.php/apps/app_api/api/v1/ui/settings")
    raw_form = await nc._session.ocs("GET", "/ocs/v1.php/apps/app_api/api/v1/ui/settings", params={"formId": FORM.id})
    assert raw_form == body_json(rec_form["response"])["ocs"]["data"]
    assert await nc.enabled_state is True


async def test_task_types_vanish_and_schedule_412_while_disabled(
    registered: FakeNextcloud, exapp: StandInExApp, http: httpx2.AsyncClient
) -> None:
    auth = registered.user_headers("admin")
    types = (await http.get("/ocs/v2.php/taskprocessing/tasktypes", headers=auth)).json()
    rec_types = recorded("01", "GET", "/ocs/v2.php/taskprocessing/tasktypes", step="(admin) lists")
    assert types == body_json(rec_types["response"])

    await registered.disable_app_async()
    assert not registered.enabled
    assert exapp.events[-2:] == ["enabled=0", "unregistered"]
    types = (await http.get("/ocs/v2.php/taskprocessing/tasktypes", headers=auth)).json()
    assert types == body_json(recorded("01", "GET", "/ocs/v2.php/taskprocessing/tasktypes", index=1)["response"])
    rec = recorded("01", "POST", "/ocs/v2.php/taskprocessing/schedule")
    response = await http.post("/ocs/v2.php/taskprocessing/schedule", json=body_json(rec["request"]), headers=auth)
    assert response.status_code == rec["response"]["status"] == 412
    assert response.json() == body_json(rec["response"])

    await registered.enable_app_async()
    assert registered.enabled
    assert exapp.events[-3:] == ["heartbeat", "enabled=1", "registered"]
    assert "init" not in exapp.events[6:]


# --------------------------------------------------------------------------------------------------------------------
# Replaying recorded scenarios exchange by exchange
# --------------------------------------------------------------------------------------------------------------------


class Replayer:
    """Sends the recorded ExApp and user requests to the fake and compares the answers with the recorded ones."""

    def __init__(self, fake: FakeNextcloud, client: httpx2.Client) -> None:
        self.fake = fake
        self.client = client
        self.task_ids: dict[int, int] = {}
        self.file_ids: dict[int, int] = {}

    def map_path(self, path: str) -> str:
        def repl(match: re.Match[str]) -> str:
            number = int(match.group(2))
            mapped = (
                self.file_ids.get(number, number) if match.group(1) == "file/" else self.task_ids.get(number, number)
            )
            return f"/{match.group(1) or ''}{mapped}"

        return re.sub(r"/(file/)?(\d+)(?=/|$)", repl, path)

    def map_ids(self, value: Any, key: str = "") -> Any:
        if isinstance(value, list):
            return [self.map_ids(v, key) for v in value]
        if isinstance(value, dict):
            return {k: self.map_ids(v, k) for k, v in value.items()}
        if isinstance(value, int) and not isinstance(value, bool):
            if key in ("id", "taskId"):
                return self.task_ids.get(value, value)
            if key in ("images", "fileId"):
                return self.file_ids.get(value, value)
        return value

    def headers(self, request: dict[str, Any]) -> dict[str, str]:
        names = header_names(request)
        if "authorization-app-api" in names:
            return app_api_headers()
        auth = header(request, "authorization") if "authorization" in names else ""
        if auth.startswith("Basic"):
            user = "alice" if "alice" in auth else "admin"
            return self.fake.user_headers(user)
        return {}

    def replay(self, exchange: dict[str, Any]) -> None:
        request, expected = exchange["request"], exchange["response"]
        body = request["body"]
        kwargs: dict[str, Any] = {"headers": self.headers(request), "params": dict(request["query"])}
        if body["encoding"] == "json":
            kwargs["json"] = self.map_ids(body["json"])
        elif body["encoding"] == "multipart":
            length = body["parts"][0]["content"]["length"]
            kwargs["files"] = {"file": ("file", png(length))}
        response = self.client.request(request["method"], self.map_path(request["path"]), **kwargs)
        where = f"{request['method']} {request['target']}"
        assert response.status_code == expected["status"], where
        expected_type = header(expected, "content-type") if "content-type" in header_names(expected) else None
        assert response.headers.get("content-type") == expected_type, where
        assert response.headers.get("x-request-id"), where
        encoding = expected["body"]["encoding"]
        if encoding == "empty":
            assert response.content == b"", where
        elif encoding == "binary":
            assert len(response.content) == expected["body"]["length"], where
            assert re.fullmatch(r'attachment; filename="\d+-\d+"', response.headers["content-disposition"]), where
        else:
            got = response.json()
            self.learn_ids(expected["body"]["json"], got)
            assert normalized(got) == normalized(self.map_ids(expected["body"]["json"])), where

    def learn_ids(self, expected: Any, got: Any) -> None:
        data, got_data = expected.get("ocs", {}).get("data"), got.get("ocs", {}).get("data")
        if not isinstance(data, dict) or not isinstance(got_data, dict):
            return
        if isinstance(data.get("task"), dict) and isinstance(got_data.get("task"), dict):
            self.task_ids.setdefault(data["task"]["id"], got_data["task"]["id"])
        if "fileId" in data and "fileId" in got_data:
            self.file_ids.setdefault(data["fileId"], got_data["fileId"])


@pytest.mark.parametrize("number", ["02", "03", "04", "05", "12"])
def test_replayed_scenario_matches_recording(registered: FakeNextcloud, number: str) -> None:
    calls_before = len(registered.app_calls)
    expected_app_calls = []
    with httpx2.Client(base_url=registered.url, trust_env=False, timeout=10) as client:
        replayer = Replayer(registered, client)
        for step in contract(number)["steps"]:
            for exchange in step["exchanges"]:
                if exchange["direction"] == "Nextcloud (AppAPI) -> ExApp":
                    expected_app_calls.append((exchange["request"]["method"], exchange["request"]["target"]))
                else:
                    replayer.replay(exchange)
    got_app_calls = [(c.method, c.target) for c in registered.app_calls[calls_before:]]
    assert got_app_calls == expected_app_calls


# --------------------------------------------------------------------------------------------------------------------
# Schedule, trigger and next_task (scenarios 02, 08, 11)
# --------------------------------------------------------------------------------------------------------------------


async def test_trigger_is_called_before_the_schedule_answer(
    registered: FakeNextcloud, exapp: StandInExApp, http: httpx2.AsyncClient
) -> None:
    exapp.trigger_delay = 0.3
    rec = recorded("02", "POST", "/ocs/v2.php/taskprocessing/schedule")
    started = time.monotonic()
    response = await http.post(
        "/ocs/v2.php/taskprocessing/schedule", json=body_json(rec["request"]), headers=registered.user_headers("admin")
    )
    assert time.monotonic() - started >= 0.3
    assert response.status_code == 200
    assert exapp.events[-1] == f"trigger:{LOCAL}"
    assert registered.triggers == [LOCAL]
    trigger_headers = exapp.headers_of("/trigger?providerId=text2image_hub%3Alocal")
    assert trigger_headers["aa-request-id"] == "CLI"
    assert trigger_headers["accept-language"] == "en"
    assert exapp.received[-1][3] == b""


async def test_next_task_returns_the_task_then_204(registered: FakeNextcloud, nc: AsyncNextcloudApp) -> None:
    rec = recorded("02", "POST", "/ocs/v2.php/taskprocessing/schedule")
    task_id = await registered.schedule_async(body_json(rec["request"])["input"], user="admin", custom_id="s02-a")
    got = await nc.providers.task_processing.next_task([LOCAL], ["core:text2image"])
    expected = body_json(recorded("02", "GET", "/ocs/v2.php/taskprocessing/tasks_provider/next")["response"])
    assert got["task"]["id"] == task_id
    assert normalized(without_ids(got)) == normalized(without_ids(expected["ocs"]["data"]))
    assert got["task"]["startedAt"] is None
    assert registered.task(task_id)["startedAt"] is not None

    assert await nc.providers.task_processing.next_task([LOCAL], ["core:text2image"]) == {}
    empty = registered.app_requests[-1]
    rec_empty = recorded("02", "GET", "/ocs/v2.php/taskprocessing/tasks_provider/next", index=1)["response"]
    assert (empty.status, rec_empty["status"]) == (204, 204)
    assert await nc.providers.task_processing.next_task([LOCAL], ["core:text2text"]) == {}


async def test_no_trigger_while_a_text2image_task_is_running(registered: FakeNextcloud, nc: AsyncNextcloudApp) -> None:
    first = await registered.schedule_async({"input": "a red fox"})
    assert (await nc.providers.task_processing.next_task([LOCAL], ["core:text2image"]))["task"]["id"] == first
    second = await registered.schedule_async({"input": "a lighthouse"})
    assert registered.triggers == [LOCAL]
    got = await nc.providers.task_processing.next_task([LOCAL], ["core:text2image"])
    assert got["task"]["id"] == second
    assert got["task"]["input"] == {"numberOfImages": 1, "size": "1024x1024", "input": "a lighthouse"}


async def test_concurrent_next_task_hands_each_task_out_once(registered: FakeNextcloud) -> None:
    clients = [new_nc(registered.url) for _ in range(4)]
    try:
        for scheduled_count, callers in ((1, 2), (2, 2), (3, 4)):
            ids = {registered.schedule({"input": f"race {i}"}) for i in range(scheduled_count)}
            results = await asyncio.gather(
                *(c.providers.task_processing.next_task([LOCAL], ["core:text2image"]) for c in clients[:callers])
            )
            handed_out = [r["task"]["id"] for r in results if r]
            assert sorted(handed_out) == sorted(ids)
            assert results.count({}) == callers - scheduled_count
            for task_id in ids:
                registered.cancel(task_id)
    finally:
        for client in clients:
            await close_nc(client)


async def test_oldest_task_is_handed_out_first_and_batch_reports_has_more(
    registered: FakeNextcloud, nc: AsyncNextcloudApp
) -> None:
    ids = [registered.schedule({"input": f"batch task {i}"}) for i in range(3)]
    batch = await nc.providers.task_processing.next_task_batch([LOCAL], ["core:text2image"], 2)
    assert [t["task"]["id"] for t in batch["tasks"]] == ids[:2]
    assert [t["provider"] for t in batch["tasks"]] == [LOCAL, LOCAL]
    assert batch["has_more"] is True
    batch = await nc.providers.task_processing.next_task_batch([LOCAL], ["core:text2image"], 2)
    assert [t["task"]["id"] for t in batch["tasks"]] == ids[2:]
    assert batch["has_more"] is False
    empty = await nc.providers.task_processing.next_task_batch([LOCAL], ["core:text2image"], 2)
    rec = recorded("11", "GET", "/ocs/v2.php/taskprocessing/tasks_provider/next_batch", index=2)
    assert empty == body_json(rec["response"])["ocs"]["data"]


async def test_watermark_custom_id_listings_and_queue_stats(
    registered: FakeNextcloud, nc: AsyncNextcloudApp, http: httpx2.AsyncClient
) -> None:
    rec = recorded("11", "POST", "/ocs/v2.php/taskprocessing/schedule")
    auth = registered.user_headers("admin")
    response = await http.post("/ocs/v2.php/taskprocessing/schedule", json=body_json(rec["request"]), headers=auth)
    assert normalized(without_ids(response.json())) == normalized(without_ids(body_json(rec["response"])))
    got = await nc.providers.task_processing.next_task([LOCAL], ["core:text2image"])
    assert got["task"]["includeWatermark"] is False
    listed = await http.get(
        "/ocs/v2.php/taskprocessing/tasks/app/assistant", params={"customId": "new-image-file:123"}, headers=auth
    )
    assert [t["customId"] for t in listed.json()["ocs"]["data"]["tasks"]] == ["new-image-file:123"]
    stats = await http.get("/ocs/v2.php/taskprocessing/queue_stats", headers=auth)
    assert stats.json()["ocs"]["data"] == {"scheduled_count": 0, "running_count": 1}


# --------------------------------------------------------------------------------------------------------------------
# Progress, upload, result, cancel, delete (scenarios 03, 04, 05, 12)
# --------------------------------------------------------------------------------------------------------------------


async def test_progress_upload_result_and_download(
    registered: FakeNextcloud, nc: AsyncNextcloudApp, http: httpx2.AsyncClient
) -> None:
    tp = nc.providers.task_processing
    task_id = await registered.schedule_async({"input": "two cats", "numberOfImages": 2}, user="admin")
    await tp.next_task([LOCAL], ["core:text2image"])
    assert (await tp.set_progress(task_id, 10))["task"]["progress"] == 0.1
    assert (await tp.set_progress(task_id, 55.5))["task"]["progress"] == 0.555
    images = [png(484), png(571)]
    file_ids = [await tp.upload_result_file(task_id, image) for image in images]
    upload = registered.app_requests[-1]
    assert (
        upload.status
        == recorded("03", "POST", "/ocs/v2.php/taskprocessing/tasks_provider/135/file")["response"]["status"]
    )
    done = await tp.report_result(task_id, {"images": file_ids})
    assert done["task"]["status"] == STATUS_SUCCESSFUL
    assert done["task"]["progress"] == 1
    assert done["task"]["output"] == {"images": file_ids}
    assert registered.progress_history[task_id] == [0.1, 0.555]

    auth = registered.user_headers("admin")
    download = await http.get(f"/ocs/v2.php/taskprocessing/tasks/{task_id}/file/{file_ids[1]}", headers=auth)
    assert download.content == images[1]
    assert download.headers["content-type"] == "image/png"
    assert registered.file(task_id, file_ids[0]) == images[0]
    missing = await http.get(f"/ocs/v2.php/taskprocessing/tasks/{task_id}/file/99999", headers=auth)
    rec = recorded("03", "GET", "/ocs/v2.php/taskprocessing/tasks/135/file/1100")["response"]
    assert (missing.status_code, missing.json()) == (rec["status"], body_json(rec))
    alice = await http.get(f"/ocs/v2.php/taskprocessing/task/{task_id}", headers=registered.user_headers("alice"))
    rec = recorded("03", "GET", "/ocs/v2.php/taskprocessing/task/135", step="alice")["response"]
    assert (alice.status_code, alice.json()) == (rec["status"], body_json(rec))


async def test_error_report_shows_only_the_user_facing_message(
    registered: FakeNextcloud, nc: AsyncNextcloudApp
) -> None:
    task_id = await registered.schedule_async({"input": "a castle"})
    await nc.providers.task_processing.next_task([LOCAL], ["core:text2image"])
    await nc.providers.task_processing.set_progress(task_id, 30)
    failed = await nc.providers.task_processing.report_result(
        task_id, error_message="RemoteBackendError: 429", user_facing_error_message="The image service is busy."
    )
    assert failed["task"]["status"] == STATUS_FAILED
    assert failed["task"]["progress"] == 0.3
    assert failed["task"]["userFacingErrorMessage"] == "The image service is busy."
    assert "errorMessage" not in registered.task(task_id)
    assert registered.admin_task(task_id)["errorMessage"] == "RemoteBackendError: 429"
    assert registered.logs[-1]["message"] == (
        f"A TaskProcessing core:text2image task with id {task_id} failed with the following message: "
        "RemoteBackendError: 429"
    )


async def test_calls_after_cancel_succeed_but_the_task_stays_cancelled(
    registered: FakeNextcloud, nc: AsyncNextcloudApp
) -> None:
    tp = nc.providers.task_processing
    task_id = await registered.schedule_async({"input": "a slow painting"})
    await tp.next_task([LOCAL], ["core:text2image"])
    await tp.set_progress(task_id, 20)
    assert registered.cancel(task_id)["status"] == STATUS_CANCELLED
    after = await tp.set_progress(task_id, 60)
    assert (after["task"]["status"], after["task"]["progress"]) == (STATUS_CANCELLED, 0.2)
    file_id = await tp.upload_result_file(task_id, png())
    assert isinstance(file_id, int)
    for result in (
        await tp.report_result(task_id, {"images": [file_id]}),
        await tp.report_result(task_id, error_message="late error"),
    ):
        assert (result["task"]["status"], result["task"]["output"]) == (STATUS_CANCELLED, None)
    assert registered.cancel(task_id)["status"] == STATUS_CANCELLED

    scheduled = await registered.schedule_async({"input": "cancelled before start"})
    cancelled = registered.cancel(scheduled)
    assert (cancelled["progress"], cancelled["startedAt"]) == (0, None)
    assert await tp.next_task([LOCAL], ["core:text2image"]) == {}


async def test_calls_for_a_deleted_task_answer_404(registered: FakeNextcloud, nc: AsyncNextcloudApp) -> None:
    tp = nc.providers.task_processing
    task_id = await registered.schedule_async({"input": "deleted while running"})
    await tp.next_task([LOCAL], ["core:text2image"])
    registered.delete(task_id)
    assert await tp.set_progress(task_id, 50) == {}
    with pytest.raises(NextcloudException) as raised:
        await tp.upload_result_file(task_id, png())
    assert raised.value.status_code == 404
    assert await tp.report_result(task_id, {"images": [1]}) == {}
    assert [r.status for r in registered.app_requests[-3:]] == [404, 404, 404]
    with pytest.raises(FakeOcsError, match="Task not found"):
        registered.task(task_id)


async def test_finished_tasks_are_not_guarded(registered: FakeNextcloud, nc: AsyncNextcloudApp) -> None:
    tp = nc.providers.task_processing
    task_id = await registered.schedule_async({"input": "twice"})
    await tp.next_task([LOCAL], ["core:text2image"])
    file_id = await tp.upload_result_file(task_id, png())
    done = await tp.report_result(task_id, {"images": [file_id], "seed_used": 42})
    assert done["task"]["output"] == {"images": [file_id]}
    failed = await tp.report_result(task_id, error_message="second report")
    assert (failed["task"]["status"], failed["task"]["output"]) == (STATUS_FAILED, {"images": [file_id]})
    running = await tp.set_progress(task_id, 50)
    assert (running["task"]["status"], running["task"]["progress"]) == (STATUS_RUNNING, 0.5)
    bad = await registered.schedule_async({"input": "bad output"})
    result = await tp.report_result(bad, {"images": [999999]})
    assert (result["task"]["status"], result["task"]["progress"]) == (STATUS_FAILED, 1)
    assert registered.admin_task(bad)["errorMessage"].startswith("The task was processed successfully but")


# --------------------------------------------------------------------------------------------------------------------
# Settings and appconfig_ex (scenario 06)
# --------------------------------------------------------------------------------------------------------------------


async def test_sensitive_field_reads_back_as_ciphertext_unless_precreated(
    registered: FakeNextcloud, nc: AsyncNextcloudApp, http: httpx2.AsyncClient
) -> None:
    cfg = nc.appconfig_ex
    assert await cfg.get_values(["backend", "remote_base_url", "remote_api_key"]) == []
    registered.save_setting("backend", "remote")
    registered.save_setting("remote_api_key", "dummy-ionos-token-0001")
    assert await cfg.get_value("backend") == "remote"
    ciphertext = await cfg.get_value("remote_api_key")
    assert ciphertext is not None
    assert re.fullmatch(r"[0-9a-f]{64}\|[0-9a-f]{32}\|[0-9a-f]{128,}\|3", ciphertext)
    forms = await http.get("/ocs/v2.php/settings/api/declarative/forms", headers=registered.user_headers("admin"))
    values = {f["id"]: f["value"] for f in forms.json()["ocs"]["data"][0]["fields"]}
    assert values == {
        "backend": "remote",
        "remote_base_url": "https://openai.inference.de-txl.ionos.com/v1",
        "remote_api_key": "dummy-ionos-token-0001",
    }

    await cfg.set_value("remote_api_key", "", sensitive=True)
    assert await cfg.get_value("remote_api_key") == ""
    body = {"app": APP_ID, "formId": "admin_settings", "fieldId": "remote_api_key", "value": "dummy-ionos-token-0002"}
    saved = await http.post(
        "/ocs/v2.php/settings/api/declarative/value-sensitive", json=body, headers=registered.user_headers("admin")
    )
    rec = recorded("06", "POST", "/ocs/v2.php/settings/api/declarative/value-sensitive", index=1)["response"]
    assert (saved.status_code, saved.json()) == (rec["status"], body_json(rec))
    assert await cfg.get_value("remote_api_key") == "dummy-ionos-token-0002"

    await cfg.set_value("remote_api_key", "k2")
    assert await cfg.get_value("remote_api_key") == ""
    await cfg.set_value("exapp_token", "tok-plain-123", sensitive=True)
    assert await cfg.get_value("exapp_token") == "tok-plain-123"
    assert registered.appconfig["exapp_token"]["sensitive"] == 1


async def test_set_value_answer_and_missing_key_delete_match_recording(
    registered: FakeNextcloud, http: httpx2.AsyncClient
) -> None:
    url = "/ocs/v1.php/apps/app_api/api/v1/ex-app/config"
    rec_set = recorded("06", "POST", url, step="plain key")
    answer = await http.post(
        url, json=body_json(rec_set["request"]), headers=app_api_headers(), params={"format": "json"}
    )
    assert without_ids(answer.json()) == without_ids(body_json(rec_set["response"]))
    for index in (0, 1):
        rec_delete = recorded("06", "DELETE", url, index=index)
        deleted = await http.request(
            "DELETE", url, json=body_json(rec_delete["request"]), headers=app_api_headers(), params={"format": "json"}
        )
        assert (deleted.status_code, deleted.json()) == (
            rec_delete["response"]["status"],
            body_json(rec_delete["response"]),
        )


async def test_form_id_trap_and_non_admin_save(
    registered: FakeNextcloud, nc: AsyncNextcloudApp, http: httpx2.AsyncClient
) -> None:
    trap = SettingsForm(
        id="text2image_hub_trap",
        section_type="admin",
        section_id="ai",
        title="trap form",
        fields=[SettingsField(id="trap_field", title="Trap", type=SettingsFieldType.TEXT, default="", options=[])],
    )
    await nc.ui.settings.register_form(trap)
    registered.save_setting("trap_field", "from-settings-page", form_id="text2image_hub_trap")
    assert await nc.appconfig_ex.get_value("trap_field") is None
    body = {"app": APP_ID, "formId": "text2image_hub_trap", "fieldId": "trap_field", "value": "full-form-id"}
    await http.post("/ocs/v2.php/settings/api/declarative/value", json=body, headers=registered.user_headers("admin"))
    assert await nc.appconfig_ex.get_value("trap_field") == "full-form-id"

    rec = recorded("06", "POST", "/ocs/v2.php/settings/api/declarative/value", step="non-admin")
    denied = await http.post(
        "/ocs/v2.php/settings/api/declarative/value",
        json=body_json(rec["request"]),
        headers=registered.user_headers("alice"),
    )
    assert (denied.status_code, denied.json()) == (rec["response"]["status"], body_json(rec["response"]))
    with pytest.raises(FakeOcsError):
        registered.save_setting("backend", "local", user="alice")


# --------------------------------------------------------------------------------------------------------------------
# Provider preference (scenario 07)
# --------------------------------------------------------------------------------------------------------------------


async def test_only_the_preferred_provider_gets_tasks(
    registered: FakeNextcloud, nc: AsyncNextcloudApp, http: httpx2.AsyncClient
) -> None:
    tp = nc.providers.task_processing
    await tp.register(REMOTE_PROVIDER)
    default = await registered.schedule_async({"input": "default preference", "size": "512x512"})
    assert registered.triggers[-1] == LOCAL
    assert await tp.next_task([REMOTE], ["core:text2image"]) == {}
    assert (await tp.next_task([LOCAL], ["core:text2image"]))["task"]["id"] == default
    await tp.report_result(default, error_message="cleanup")

    rec = recorded("07", "PUT", "/index.php/settings/api/admin/ai")
    saved = await http.put(
        "/index.php/settings/api/admin/ai", json=body_json(rec["request"]), headers=registered.user_headers("admin")
    )
    assert (saved.status_code, saved.json()) == (200, [])
    task_id = await registered.schedule_async(
        {"input": "preferred is remote", "numberOfImages": 1, "size": "512x512", "seed": 3}
    )
    assert registered.triggers[-1] == REMOTE
    task = registered.task(task_id)
    assert task["input"] == {"input": "preferred is remote", "numberOfImages": 1}
    assert task["completionExpectedAt"] - task["scheduledAt"] == 120
    assert await tp.next_task([LOCAL], ["core:text2image"]) == {}
    assert await tp.next_task_batch([LOCAL], ["core:text2image"], 2) == {"tasks": [], "has_more": False}
    both = await tp.next_task([LOCAL, REMOTE], ["core:text2image"])
    assert both["provider"] == {"name": REMOTE}
    await tp.report_result(both["task"]["id"], error_message="cleanup")

    registered.set_preferred_provider("no_such_app:provider")
    await registered.schedule_async({"input": "preference dangling"})
    assert registered.triggers[-1] == LOCAL
    await tp.unregister(REMOTE)
    with pytest.raises(NextcloudException) as raised:
        await tp.unregister(REMOTE, not_fail=False)
    assert raised.value.status_code == 404


# --------------------------------------------------------------------------------------------------------------------
# AppAPI proxy (scenarios 09, 11)
# --------------------------------------------------------------------------------------------------------------------


async def test_proxy_forwards_public_routes_and_hides_user_routes_without_login(
    registered: FakeNextcloud, exapp: StandInExApp, http: httpx2.AsyncClient
) -> None:
    base = f"/index.php/apps/app_api/proxy/{APP_ID}"
    bearer = {"Authorization": "Bearer sk-not-a-nextcloud-token-123"}
    admin = registered.user_headers("admin")
    alice = registered.user_headers("alice")
    cases = [
        ("/v1/models", {}, 200, ""),
        ("/v1/models", admin, 200, "admin"),
        ("/v1/models", bearer, 200, ""),
        ("/user/models", {}, 404, None),
        ("/user/models", bearer, 404, None),
        ("/user/models", alice, 200, "alice"),
        ("/admin/models", alice, 404, None),
        ("/admin/models", admin, 200, "admin"),
        ("/not-declared", admin, 404, None),
    ]
    for path, headers, status, user in cases:
        before = len(exapp.received)
        response = await http.get(base + path, params={"limit": "5"}, headers=headers)
        assert response.status_code == status, (path, headers)
        if user is None:
            assert len(exapp.received) == before
            assert response.headers["content-type"] == "text/html; charset=UTF-8"
            continue
        assert response.json()["route"] == path
        assert response.headers["x-echo"] == "yes"
        seen = {k.lower(): v for k, v in exapp.received[-1][2]}
        assert base64.b64decode(seen["authorization-app-api"]).decode() == f"{user}:{APP_SECRET}"
        assert seen.get("authorization") == headers.get("Authorization")
        assert seen["x-origin-ip"] == "127.0.0.1"
        assert seen["aa-request-id"] == response.headers["x-request-id"]

    rec = recorded("09", "POST", f"{base}/v1/images/generations")
    posted = await http.post(base + "/v1/images/generations", json=body_json(rec["request"]), headers=bearer)
    assert json.loads(posted.json()["body"]) == body_json(rec["request"])


def test_proxy_rejects_parent_segments_and_answers_500_when_the_app_is_down(registered: FakeNextcloud) -> None:
    with socket.create_connection(("127.0.0.1", registered.port)) as sock:
        target = f"/index.php/apps/app_api/proxy/{APP_ID}/v1/../admin/models"
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 404")
    registered.app_url = f"http://127.0.0.1:{free_port()}"
    with httpx2.Client(base_url=registered.url, trust_env=False) as client:
        down = client.get(f"/index.php/apps/app_api/proxy/{APP_ID}/v1/models")
    assert (down.status_code, down.content) == (500, b"")
    assert "cURL error 7" in registered.logs[-1]["message"]


# --------------------------------------------------------------------------------------------------------------------
# Trigger failures and logs (scenario 11)
# --------------------------------------------------------------------------------------------------------------------


def test_failed_or_slow_trigger_is_logged_and_the_schedule_still_succeeds(
    registered: FakeNextcloud, exapp: StandInExApp
) -> None:
    app_url = registered.app_url
    registered.app_url = f"http://127.0.0.1:{free_port()}"
    down = registered.schedule({"input": "scheduled while the ExApp is down"})
    assert registered.task(down)["status"] == STATUS_SCHEDULED
    entry = registered.logs[-1]
    assert (entry["level"], entry["app"]) == (2, "app_api")
    assert re.fullmatch(
        rf"Error during request to ExApp {APP_ID}: cURL error 7: "
        r"Failed to connect to 127\.0\.0\.1 port \d+ after 0 ms: Couldn't connect to server "
        r"\(see https://curl\.haxx\.se/libcurl/c/libcurl-errors\.html\) for "
        r"http://127\.0\.0\.1:\d+/trigger\?providerId=text2image_hub%3Alocal",
        entry["message"],
    )
    registered.cancel(down)

    registered.app_url = app_url
    registered.trigger_timeout = 0.2
    exapp.trigger_delay = 1.0
    started = time.monotonic()
    slow = registered.schedule({"input": "slow trigger"})
    assert 0.2 <= time.monotonic() - started < 0.9
    assert registered.task(slow)["status"] == STATUS_SCHEDULED
    assert "cURL error 28: Operation timed out after 201 milliseconds" in registered.logs[-1]["message"]


async def test_exapp_log_goes_to_nextcloud_log_above_the_loglevel(
    registered: FakeNextcloud, nc: AsyncNextcloudApp
) -> None:
    await nc.log(LogLvl.ERROR, "backend unreachable (test entry)")
    await nc.log(LogLvl.DEBUG, "debug entry")
    app_entries = [e for e in registered.logs if e["app"] == APP_ID]
    assert app_entries == [{"level": 3, "app": APP_ID, "user": "--", "message": "backend unreachable (test entry)"}]
    assert [r.json for r in registered.app_requests if r.path.endswith("/api/v1/log")] == [
        {"level": 3, "message": "backend unreachable (test entry)"},
        {"level": 0, "message": "debug entry"},
    ]


# --------------------------------------------------------------------------------------------------------------------
# Failure injection as nc_py_api sees it (scenario 10)
# --------------------------------------------------------------------------------------------------------------------


async def test_refused_connections_raise_connection_error_and_recover_on_the_same_port(
    registered: FakeNextcloud, nc: AsyncNextcloudApp
) -> None:
    port = registered.port
    registered.set_failure("refuse")
    with pytest.raises(niquests.exceptions.ConnectionError):
        await nc.providers.task_processing.next_task([LOCAL], ["core:text2image"])
    assert await nc.enabled_state is False
    registered.set_failure(None)
    assert registered.port == port
    assert await nc.enabled_state is True


async def test_timeout_becomes_408_swallowed_by_next_task(registered: FakeNextcloud) -> None:
    task_id = registered.schedule({"input": "nc down test"})
    registered.set_failure("timeout", hold_seconds=5)
    client = new_nc(registered.url, timeout=0.3)
    try:
        assert await client.providers.task_processing.next_task([LOCAL], ["core:text2image"]) == {}
        with pytest.raises(NextcloudException) as raised:
            await client.providers.task_processing.upload_result_file(task_id, png())
        assert raised.value.status_code == 408
    finally:
        registered.set_failure(None)
        await close_nc(client)
    assert registered.task(task_id)["status"] == STATUS_SCHEDULED


async def test_maintenance_answers_503_to_everything(
    registered: FakeNextcloud, nc: AsyncNextcloudApp, http: httpx2.AsyncClient
) -> None:
    task_id = registered.schedule({"input": "nc down test"})
    registered.set_failure("maintenance")
    tp = nc.providers.task_processing
    assert await tp.next_task([LOCAL], ["core:text2image"]) == {}
    assert await tp.set_progress(task_id, 50) == {}
    with pytest.raises(NextcloudException) as raised:
        await tp.upload_result_file(task_id, png())
    assert raised.value.status_code == 503
    with pytest.raises(NextcloudException) as raised:
        await nc.appconfig_ex.get_value("backend")
    assert raised.value.status_code == 503
    for method, path in (
        ("GET", "/ocs/v2.php/taskprocessing/tasks_provider/next"),
        ("GET", "/ocs/v1.php/cloud/capabilities"),
        ("GET", "/ocs/v2.php/taskprocessing/task/232"),
    ):
        rec = recorded("10", method, path)["response"]
        answer = await http.request(method, path, headers=registered.user_headers("admin"))
        assert (answer.status_code, answer.json()) == (rec["status"], body_json(rec))
        assert answer.headers["x-nextcloud-maintenance-mode"] == "1"
    registered.set_failure(None)
    assert registered.task(task_id)["status"] == STATUS_SCHEDULED


async def test_wrong_secret_answers_412_and_401(registered: FakeNextcloud, http: httpx2.AsyncClient) -> None:
    task_id = registered.schedule({"input": "nc down test"})
    for client_secret, mode in (("wrong-secret", None), (APP_SECRET, "wrong_secret")):
        registered.set_failure(mode)
        client = new_nc(registered.url, secret=client_secret)
        try:
            tp = client.providers.task_processing
            assert await tp.next_task([LOCAL], ["core:text2image"]) == {}
            assert await tp.report_result(task_id, error_message="x") == {}
            with pytest.raises(NextcloudException) as raised:
                await tp.upload_result_file(task_id, png())
            assert raised.value.status_code == 412
            with pytest.raises(NextcloudException) as raised:
                await client.appconfig_ex.get_value("backend")
            assert raised.value.status_code == 401
            await client.log(LogLvl.ERROR, "test log line")  # swallows the 401
            assert await client.enabled_state is False
        finally:
            await close_nc(client)
    rec = recorded("10", "GET", "/ocs/v2.php/taskprocessing/tasks_provider/next", step="wrong")["response"]
    answer = await http.get("/ocs/v2.php/taskprocessing/tasks_provider/next", headers=app_api_headers())
    assert (answer.status_code, answer.json()) == (rec["status"], body_json(rec))
    rec = recorded("10", "GET", "/ocs/v1.php/apps/app_api/ex-app/state", step="wrong")["response"]
    answer = await http.get("/ocs/v1.php/apps/app_api/ex-app/state", headers=app_api_headers())
    assert (answer.status_code, answer.json()) == (rec["status"], body_json(rec))
    capabilities = await http.get("/ocs/v1.php/cloud/capabilities", headers=app_api_headers())
    assert capabilities.status_code == 200
    assert registered.logs[-1]["message"] == f"Invalid signature for ExApp: {APP_ID} and user: null."
    registered.set_failure(None)
    assert registered.task(task_id)["status"] == STATUS_SCHEDULED


def test_enabled_flag_survives_an_exapp_restart(registered: FakeNextcloud, exapp: StandInExApp) -> None:
    calls = len(registered.app_calls)
    exapp.server.pause()
    exapp.server.resume()
    assert registered.enabled
    assert len(registered.app_calls) == calls
    registered.schedule({"input": "after restart"})
    assert registered.triggers == [LOCAL]


# --------------------------------------------------------------------------------------------------------------------
# Per-call cost (a real server's tens of milliseconds per call)
# --------------------------------------------------------------------------------------------------------------------


async def test_call_cost_delays_matching_calls_without_blocking_the_others(
    registered: FakeNextcloud, nc: AsyncNextcloudApp
) -> None:
    ids = {registered.schedule({"input": f"costed {i}"}) for i in range(2)}
    registered.set_call_costs({r"/tasks_provider/next$": 0.3})
    other = new_nc(registered.url)
    finished: list[str] = []

    async def claim(client: AsyncNextcloudApp) -> tuple[int, float]:
        started = time.monotonic()
        got = await client.providers.task_processing.next_task([LOCAL], ["core:text2image"])
        finished.append("claim")
        return int(got["task"]["id"]), time.monotonic() - started

    async def state() -> None:
        await asyncio.sleep(0.05)  # sent while both claims wait out their cost
        assert await nc.enabled_state is True
        finished.append("state")

    try:
        started = time.monotonic()
        first, second, _ = await asyncio.gather(claim(nc), claim(other), state())
        elapsed = time.monotonic() - started
    finally:
        await close_nc(other)
    assert {first[0], second[0]} == ids
    assert min(first[1], second[1]) >= 0.3
    assert elapsed < 0.6  # the two costs overlapped: the fake's loop slept, it did not block
    assert finished[0] == "state"  # an uncosted call is answered meanwhile
    registered.set_call_costs(None)
    started = time.monotonic()
    assert await nc.providers.task_processing.next_task([LOCAL], ["core:text2image"]) == {}
    assert time.monotonic() - started < 0.3


async def test_calls_still_nest_with_a_cost_on_every_call(
    fake: FakeNextcloud, exapp: StandInExApp, http: httpx2.AsyncClient
) -> None:
    fake.set_call_costs({".": 0.05})
    started = time.monotonic()
    await fake.register_app_async(limit_s=10)
    # the init-status PUT waits for /heartbeat and /enabled, during which the ExApp registers its provider and form
    assert time.monotonic() - started >= 3 * 0.05
    assert fake.enabled
    assert exapp.events[:5] == ["heartbeat", "init", "heartbeat", "enabled=1", "registered"]
    rec = recorded("02", "POST", "/ocs/v2.php/taskprocessing/schedule")
    answer = await http.post(
        "/ocs/v2.php/taskprocessing/schedule", json=body_json(rec["request"]), headers=fake.user_headers("admin")
    )
    assert answer.status_code == 200
    assert exapp.events[-1] == f"trigger:{LOCAL}"  # called before the schedule was answered
    assert fake.triggers == [LOCAL]
    with pytest.raises(ValueError, match="negative"):
        fake.set_call_costs({".": -1.0})
