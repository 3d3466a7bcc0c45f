"""The /v1 API through the real HTTP stack: uvicorn in a thread, the instant backend, real clients (openai, httpx2)."""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from PIL import Image
from pydantic import SecretStr

from tests.conftest import wait_until
from tests.fake_nextcloud import FakeNextcloud
from tests.instant_backend import InstantBackend, StaticBackends
from tests.servers import ServerThread, free_port
from text2image_hub.admin import FIELD_IDS, RuntimeConfig, config_from_values
from text2image_hub.api.images import ImageStore
from text2image_hub.api.limits import CallerLimiter, ResultCache, cache_key
from text2image_hub.app import create_app
from text2image_hub.errors import (
    BackendUnavailableError,
    GpuOutOfMemoryError,
    NotFoundError,
    RateLimitError,
    RemoteBusyError,
)
from text2image_hub.imaging import ImageSize
from text2image_hub.service import GenerationResult, ImageRequest, RenderedImage
from text2image_hub.settings import Settings, load_settings
from text2image_hub.worker import WorkerTiming

KEY = "k1"
SECRET = "s3cret-app-secret"
APP_ID = "text2image_hub"
PROXY = f"/index.php/apps/app_api/proxy/{APP_ID}"
ERROR_FIELDS = {"message", "type", "param", "code"}


@dataclass
class Running:
    url: str
    backends: StaticBackends
    settings: Settings

    @property
    def local(self) -> InstantBackend:
        backend = self.backends.local_backend
        assert isinstance(backend, InstantBackend)
        return backend

    def client(self, key: str | None = KEY, **headers: str) -> httpx2.Client:
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return httpx2.Client(base_url=self.url, headers=headers, timeout=30)


def standalone_settings(tmp_path: Path, **env: str) -> Settings:
    environ = {"APP_PERSISTENT_STORAGE": str(tmp_path), "T2I_API_KEYS": f"{KEY},k2", "T2I_BACKEND": "local", **env}
    return load_settings(environ, FIELD_IDS)


@contextlib.contextmanager
def serve(
    settings: Settings, backends: StaticBackends | None = None, *, clock: Callable[[], float] = time.time
) -> Iterator[Running]:
    backends = backends or StaticBackends()

    async def factory(_: Settings) -> StaticBackends:
        return backends

    timing = WorkerTiming(poll_interval=60, backoff_initial=30)
    app = create_app(settings, backends=factory, timing=timing, clock=clock)
    with ServerThread(app, lifespan="on") as server:
        yield Running(server.url, backends, settings)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Running]:
    with serve(standalone_settings(tmp_path)) as running:
        yield running


@pytest.fixture(scope="module")
def shared_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """One server for the tests that only send requests that are refused (nothing changes between them)."""
    with serve(standalone_settings(tmp_path_factory.mktemp("shared"))) as running:
        yield running


@pytest.fixture
def nextcloud_api(tmp_path: Path) -> Iterator[Running]:
    with serve_under_nextcloud(tmp_path) as running:
        yield running


@contextlib.contextmanager
def serve_under_nextcloud(
    tmp_path: Path, backends: StaticBackends | None = None, *, clock: Callable[[], float] = time.time
) -> Iterator[Running]:
    """The app under (the fake) Nextcloud: AppAPI headers are checked, admin settings come from its appconfig_ex.

    The tests send AppAPI's proxy headers to the app themselves (``appapi()``), so that they can also forge them.
    """
    with FakeNextcloud(app_id=APP_ID, app_secret=SECRET) as nextcloud:
        environ = {
            "APP_PERSISTENT_STORAGE": str(tmp_path),
            "NEXTCLOUD_URL": nextcloud.url,
            "APP_SECRET": SECRET,
            "APP_ID": APP_ID,
            "APP_VERSION": nextcloud.app_version,
            "T2I_BACKEND": "local",
        }
        with serve(load_settings(environ, FIELD_IDS), backends, clock=clock) as running:
            nextcloud.app_url = running.url
            nextcloud.enable_app()  # the app registers its settings form
            nextcloud.save_setting("api_keys", KEY)  # as the admin does on the settings page
            yield running


def appapi(user: str = "", secret: str = SECRET) -> dict[str, str]:
    """The headers AppAPI's proxy adds (scenario 09): the user part is empty for anonymous and Bearer callers."""
    signature = base64.b64encode(f"{user}:{secret}".encode()).decode()
    return {
        "x-origin-ip": "127.0.0.1",
        "aa-version": "34.0.0",
        "ex-app-id": APP_ID,
        "ex-app-version": "1.0.0",
        "authorization-app-api": signature,
        "aa-request-id": "req-1",
    }


def png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    size: tuple[int, int] = Image.open(io.BytesIO(data)).size
    return size


def error_of(response: httpx2.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == ERROR_FIELDS
    error: dict[str, Any] = body["error"]
    return error


# --- generation ----------------------------------------------------------------------------------------------------
def test_openai_client_b64_json_returns_pngs_and_extensions(api: Running) -> None:
    client = openai.OpenAI(base_url=f"{api.url}/v1", api_key=KEY, max_retries=0)
    raw = client.images.with_raw_response.generate(prompt="a red fox", size="256x256", n=2)
    result = raw.parse()
    assert len(result.data or []) == 2
    for image in result.data or []:
        assert image.b64_json is not None
        assert image.url is None
        assert png_size(base64.b64decode(image.b64_json)) == (256, 256)
    extra = result.model_extra or {}
    assert extra["model"] == "test/instant"
    assert extra["backend"] == "local"
    assert len(extra["seeds"]) == 2
    assert extra["generation_seconds"] >= 0
    assert raw.headers["X-Model"] == "test/instant"
    assert raw.headers["X-Backend"] == "local"
    assert raw.headers["X-Seeds"] == ",".join(str(seed) for seed in extra["seeds"])
    assert float(raw.headers["X-Generation-Seconds"]) >= 0
    assert api.local.calls[-1].prompt == "a red fox"


def test_openai_client_url_is_absolute_and_needs_no_auth(api: Running) -> None:
    client = openai.OpenAI(base_url=f"{api.url}/v1", api_key=KEY, max_retries=0)
    result = client.images.generate(prompt="a lighthouse", size="512x512", response_format="url")
    url = (result.data or [])[0].url
    assert url is not None
    assert url.startswith(f"{api.url}/v1/images/")
    downloaded = httpx2.get(url)  # no Authorization header
    assert downloaded.status_code == 200
    assert downloaded.headers["content-type"] == "image/png"
    assert png_size(downloaded.content) == (512, 512)


def test_openai_client_error_is_parsed_from_envelope(api: Running) -> None:
    client = openai.OpenAI(base_url=f"{api.url}/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(prompt="x", size="640x480")
    assert caught.value.code == "INVALID_SIZE"
    assert caught.value.param == "size"


def test_nextcloud_minimal_request_with_openai_model_name_uses_primary_model(api: Running) -> None:
    # Nextcloud's OpenAI integration sends exactly these four fields (dall-e-2 is its default model)
    with api.client() as client:
        response = client.post(
            "/v1/images/generations", json={"prompt": "a cat", "size": "1024x1024", "n": 1, "model": "dall-e-2"}
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "test/instant"
    assert isinstance(body["created"], int)
    assert png_size(base64.b64decode(body["data"][0]["b64_json"])) == (1024, 1024)


def test_model_by_id_is_used_and_unknown_model_is_400_model_not_found(api: Running) -> None:
    with api.client() as client:
        ok = client.post("/v1/images/generations", json={"prompt": "x", "model": "test/instant"})
        unknown = client.post("/v1/images/generations", json={"prompt": "x", "model": "stable-diffusion-9"})
    assert ok.status_code == 200
    error = error_of(unknown, 400)
    assert (error["code"], error["param"], error["type"]) == ("MODEL_NOT_FOUND", "model", "invalid_request_error")
    assert "test/instant" in error["message"]


def test_multipart_request_with_comma_separated_seeds(api: Running) -> None:
    fields = {"prompt": "a cat", "size": "256x256", "seeds": "7,8,9", "useCache": "false", "seed": ""}
    with api.client() as client:
        response = client.post("/v1/images/generations", files={key: (None, value) for key, value in fields.items()})
    assert response.status_code == 200, response.text
    assert response.json()["seeds"] == [7, 8, 9]
    assert response.headers["X-Seeds"] == "7,8,9"
    assert api.local.calls[-1].seeds == (7, 8, 9)


def test_form_urlencoded_request_with_json_array_seeds(api: Running) -> None:
    with api.client() as client:
        response = client.post(
            "/v1/images/generations",
            data={"prompt": "a dog", "n": "2", "seeds": "[3, 4]", "response_format": "url", "steps": "2"},
        )
    assert response.status_code == 200, response.text
    assert [item["seed"] for item in response.json()["data"]] == [3, 4]
    assert api.local.calls[-1].steps == 2


def test_seed_gives_consecutive_seeds_per_image(api: Running) -> None:
    with api.client() as client:
        response = client.post("/v1/images/generations", json={"prompt": "x", "n": 3, "seed": 41})
    assert response.json()["seeds"] == [41, 42, 43]


def test_negative_prompt_steps_and_guidance_reach_the_backend(api: Running) -> None:
    body = {"prompt": "x", "negative_prompt": "blur", "steps": 3, "guidance_scale": 2.5, "quality": "hd"}
    with api.client() as client:
        assert client.post("/v1/images/generations", json=body).status_code == 200
    call = api.local.calls[-1]
    assert (call.negative_prompt, call.steps, call.guidance_scale) == ("blur", 3, 2.5)


BAD_REQUESTS: list[tuple[str, dict[str, Any], str, str | None]] = [
    ("no prompt", {"size": "256x256"}, "MISSING_PROMPT", "prompt"),
    ("blank prompt", {"prompt": "   "}, "MISSING_PROMPT", "prompt"),
    ("prompt not text", {"prompt": 42}, "INVALID_PROMPT", "prompt"),
    ("prompt too long", {"prompt": "x" * 32_001}, "PROMPT_TOO_LONG", "prompt"),
    ("size unparsable", {"prompt": "x", "size": "big"}, "INVALID_SIZE", "size"),
    ("size unsupported", {"prompt": "x", "size": "640x480"}, "INVALID_SIZE", "size"),
    ("n zero", {"prompt": "x", "n": 0}, "INVALID_N", "n"),
    ("n thirteen", {"prompt": "x", "n": 13}, "INVALID_N", "n"),
    ("n text", {"prompt": "x", "n": "two"}, "INVALID_N", "n"),
    ("quality", {"prompt": "x", "quality": "ultra"}, "INVALID_QUALITY", "quality"),
    ("style", {"prompt": "x", "style": "baroque"}, "INVALID_STYLE", "style"),
    ("response_format", {"prompt": "x", "response_format": "jpeg"}, "INVALID_RESPONSE_FORMAT", "response_format"),
    ("stream", {"prompt": "x", "stream": True}, "UNSUPPORTED_PARAMETER", "stream"),
    ("output_format", {"prompt": "x", "output_format": "webp"}, "UNSUPPORTED_PARAMETER", "output_format"),
    ("background", {"prompt": "x", "background": "transparent"}, "UNSUPPORTED_PARAMETER", "background"),
    ("seed negative", {"prompt": "x", "seed": -1}, "INVALID_SEED", "seed"),
    ("seed too big", {"prompt": "x", "seed": 2**32}, "INVALID_SEED", "seed"),
    ("seed overflow with n", {"prompt": "x", "seed": 2**32 - 1, "n": 2}, "INVALID_SEED", "seed"),
    ("seeds count", {"prompt": "x", "n": 2, "seeds": [1, 2, 3]}, "INVALID_SEEDS", "seeds"),
    ("seeds text", {"prompt": "x", "seeds": "a,b"}, "INVALID_SEEDS", "seeds"),
    ("seeds bad json", {"prompt": "x", "seeds": "[1,"}, "INVALID_SEEDS", "seeds"),
    ("seeds out of range", {"prompt": "x", "seeds": [2**32]}, "INVALID_SEEDS", "seeds"),
    ("seed and seeds", {"prompt": "x", "seed": 1, "seeds": [1]}, "INVALID_SEEDS", "seeds"),
    ("steps zero", {"prompt": "x", "steps": 0}, "INVALID_STEPS", "steps"),
    ("steps beyond model", {"prompt": "x", "steps": 9}, "INVALID_STEPS", "steps"),
    ("guidance", {"prompt": "x", "guidance_scale": -1}, "INVALID_GUIDANCE_SCALE", "guidance_scale"),
    ("negative prompt type", {"prompt": "x", "negative_prompt": ["a"]}, "INVALID_NEGATIVE_PROMPT", "negative_prompt"),
    ("useCache", {"prompt": "x", "useCache": "maybe"}, "INVALID_USE_CACHE", "useCache"),
    ("model type", {"prompt": "x", "model": 3}, "INVALID_MODEL", "model"),
    ("user type", {"prompt": "x", "user": {"id": 1}}, "INVALID_USER", "user"),
]


@pytest.mark.parametrize(
    ("body", "code", "param"), [case[1:] for case in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS]
)
def test_bad_request_is_400_envelope_with_code(
    shared_api: Running, body: dict[str, Any], code: str, param: str | None
) -> None:
    with shared_api.client() as client:
        error = error_of(client.post("/v1/images/generations", json=body), 400)
    assert (error["code"], error["param"], error["type"]) == (code, param, "invalid_request_error")
    assert error["message"]


@pytest.mark.parametrize(
    ("content", "content_type", "code"),
    [
        (b"{not json", "application/json", "INVALID_BODY"),
        (b"[1, 2]", "application/json", "INVALID_BODY"),
        (b"\xff\xfe", "application/json", "INVALID_BODY"),
        (b"[" * 100_000, "application/json", "INVALID_BODY"),
        (b"prompt=x", "text/plain", "UNSUPPORTED_MEDIA_TYPE"),
        (b'{"prompt": "' + b"x" * 1024 * 1024 + b'"}', "application/json", "REQUEST_TOO_LARGE"),
        (b"prompt=" + b"x" * 1024 * 1024, "application/x-www-form-urlencoded", "REQUEST_TOO_LARGE"),
        (b"--x\r\nbroken", "multipart/form-data", "INVALID_BODY"),  # no boundary
    ],
)
def test_unreadable_body_is_400(shared_api: Running, content: bytes, content_type: str, code: str) -> None:
    with shared_api.client() as client:
        response = client.post("/v1/images/generations", content=content, headers={"content-type": content_type})
    assert error_of(response, 400)["code"] == code


def test_chunked_body_beyond_limit_is_400(shared_api: Running) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: the server counts while it reads
        yield b'{"prompt": "'
        for _ in range(20):
            yield b"x" * 65536
        yield b'"}'

    with shared_api.client() as client:
        response = client.post("/v1/images/generations", content=chunks(), headers={"content-type": "application/json"})
    assert error_of(response, 400)["code"] == "REQUEST_TOO_LARGE"


def test_headers_carry_printable_ascii_only(tmp_path: Path) -> None:
    backends = StaticBackends(local_backend=InstantBackend(model_id="test/modèle\u2028x"))
    with serve(standalone_settings(tmp_path), backends) as running, running.client() as client:
        response = client.post("/v1/images/generations", json={"prompt": "x"})
    assert response.status_code == 200
    assert response.headers["X-Model"] == "test/mod?le?x"
    assert response.json()["model"] == "test/modèle\u2028x"


def test_file_upload_in_form_is_400(api: Running) -> None:
    with api.client() as client:
        response = client.post("/v1/images/generations", data={"prompt": "x"}, files={"image": ("a.png", b"png")})
    assert error_of(response, 400)["code"] == "INVALID_BODY"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"negative_prompt": "blur"}, "negative_prompt"),
        ({"steps": 4}, "steps"),
        ({"guidance_scale": 3.5}, "guidance_scale"),
        ({"seed": 7}, "seed"),
        ({"seeds": [7, 8]}, "seed"),
    ],
)
def test_parameter_the_remote_model_cannot_take_is_unsupported(
    tmp_path: Path, extra: dict[str, Any], param: str
) -> None:
    remote = InstantBackend(backend_name="remote", model_id="test/remote")
    settings = standalone_settings(tmp_path, T2I_BACKEND="remote")
    with serve(settings, StaticBackends(local_backend=None, remote_backend=remote)) as running, running.client() as c:
        error = error_of(c.post("/v1/images/generations", json={"prompt": "x", **extra}), 400)
        plain = c.post("/v1/images/generations", json={"prompt": "x", "n": 2}).json()
    assert (error["code"], error["param"]) == ("UNSUPPORTED_PARAMETER", param)
    assert remote.calls == [remote.calls[0]], "nothing was generated for the refused request"
    assert "seeds" not in plain, "no seed is claimed for images made without one"
    assert all("seed" not in image for image in plain["data"])


def test_backend_errors_use_their_status_code_and_user_message(api: Running) -> None:
    with api.client() as client:
        api.local.fail_with = GpuOutOfMemoryError("CUDA out of memory at 0x7f: tried to allocate 20 GiB")
        oom = client.post("/v1/images/generations", json={"prompt": "x"})
        api.local.fail_with = BackendUnavailableError("weights missing in /data/models")
        unavailable = client.post("/v1/images/generations", json={"prompt": "x"})
        api.local.fail_with = RemoteBusyError("IONOS 429", retry_after=12.2)
        busy = client.post("/v1/images/generations", json={"prompt": "x"})
    error = error_of(oom, 500)
    assert (error["code"], error["type"]) == ("GPU_OUT_OF_MEMORY", "server_error")
    assert error["message"] == str(GpuOutOfMemoryError.default_user_message)
    assert "0x7f" not in oom.text
    assert error_of(unavailable, 503)["code"] == "BACKEND_UNAVAILABLE"
    assert "/data/models" not in unavailable.text
    assert unavailable.headers["Retry-After"] == "30"
    assert error_of(busy, 429)["code"] == "REMOTE_BUSY"
    assert busy.headers["Retry-After"] == "13"


def test_unexpected_exception_is_generic_500_and_logged(api: Running, caplog: pytest.LogCaptureFixture) -> None:
    api.local.fail_with = RuntimeError("internal detail 0xdeadbeef")
    with caplog.at_level(logging.ERROR, logger="text2image_hub"), api.client() as client:
        response = client.post("/v1/images/generations", json={"prompt": "x"})
        models = client.get("/v1/models")
    error = error_of(response, 500)
    assert (error["code"], error["type"]) == ("INTERNAL_ERROR", "server_error")
    assert "0xdeadbeef" not in response.text
    assert "0xdeadbeef" in caplog.text  # the admin finds the cause in the log
    assert models.status_code == 200  # the server keeps serving


# --- models ----------------------------------------------------------------------------------------------------------
def test_models_list_in_openai_shape_with_capabilities(api: Running) -> None:
    client = openai.OpenAI(base_url=f"{api.url}/v1", api_key=KEY, max_retries=0)
    models = list(client.models.list())
    assert [model.id for model in models] == ["test/instant"]
    assert models[0].object == "model"
    capabilities = (models[0].model_extra or {})["capabilities"]
    assert capabilities["sizes"] == ["256x256", "512x512", "1024x1024", "1024x768"]
    assert capabilities["default_size"] == "512x512"
    assert capabilities["steps"] == {"minimum": 1, "maximum": 8, "default": 4}
    assert capabilities["supports_negative_prompt"] is True
    assert capabilities["max_n"] == 12
    assert capabilities["backend"] == "local"
    assert capabilities["primary"] is True


def test_model_by_id_with_slash_and_unknown_model(api: Running) -> None:
    client = openai.OpenAI(base_url=f"{api.url}/v1", api_key=KEY, max_retries=0)
    assert client.models.retrieve("test/instant").id == "test/instant"
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("dall-e-3")
    assert caught.value.code == "MODEL_NOT_FOUND"


def test_models_list_local_then_remote(tmp_path: Path) -> None:
    backends = StaticBackends(remote_backend=InstantBackend(backend_name="remote", model_id="test/remote"))
    settings = standalone_settings(tmp_path, T2I_BACKEND="local_then_remote", T2I_REMOTE_API_KEY="tok")
    with serve(settings, backends) as running, running.client() as client:
        data = client.get("/v1/models").json()["data"]
        remote = client.post("/v1/images/generations", json={"prompt": "x", "model": "test/remote"})
    assert [(m["id"], m["capabilities"]["primary"]) for m in data] == [("test/instant", True), ("test/remote", False)]
    assert remote.headers["X-Backend"] == "remote"


# --- auth --------------------------------------------------------------------------------------------------------
def test_standalone_without_key_or_with_wrong_key_is_401(api: Running) -> None:
    with api.client(key=None) as client:
        missing = client.post("/v1/images/generations", json={"prompt": "x"})
    with api.client(key="wrong") as client:
        wrong = client.get("/v1/models")
    error = error_of(missing, 401)
    assert (error["code"], error["type"]) == ("INVALID_API_KEY", "authentication_error")
    assert "T2I_API_KEYS" in error["message"]
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    assert "not valid" in error_of(wrong, 401)["message"]
    assert api.local.calls == []


def test_standalone_ignores_appapi_headers(api: Running) -> None:
    with api.client(key=None, **appapi("alice")) as client:
        assert client.get("/v1/models").status_code == 401


def test_second_key_is_accepted(api: Running) -> None:
    with api.client(key="k2") as client:
        assert client.get("/v1/models").status_code == 200


def test_nextcloud_user_through_proxy_is_accepted(nextcloud_api: Running) -> None:
    with nextcloud_api.client(key=None, **appapi("alice")) as client:
        response = client.post("/v1/images/generations", json={"prompt": "x", "size": "256x256"})
    assert response.status_code == 200, response.text


def test_key_through_proxy_and_directly_is_accepted(nextcloud_api: Running) -> None:
    with nextcloud_api.client(**appapi("")) as proxied, nextcloud_api.client() as direct:
        assert proxied.get("/v1/models").status_code == 200
        assert direct.get("/v1/models").status_code == 200


def test_anonymous_proxy_call_is_401_saying_how_to_get_access(nextcloud_api: Running) -> None:
    with nextcloud_api.client(key=None, **appapi("")) as client:
        response = client.post("/v1/images/generations", json={"prompt": "x"})
    message = error_of(response, 401)["message"]
    assert "log in to Nextcloud" in message.lower() or "Log in to Nextcloud" in message
    assert "API keys" in message
    assert nextcloud_api.local.calls == []


@pytest.mark.parametrize(
    "headers",
    [
        {},  # nothing at all
        appapi("alice", secret="forged"),  # a user named with the wrong secret
        {**appapi("alice"), "ex-app-id": "another_app"},
        {"Authorization": "Bearer wrong"},
    ],
)
def test_invalid_credentials_under_nextcloud_are_401(nextcloud_api: Running, headers: dict[str, str]) -> None:
    with nextcloud_api.client(key=None, **headers) as client:
        error_of(client.get("/v1/models"), 401)


def test_basic_auth_password_is_never_logged(nextcloud_api: Running, caplog: pytest.LogCaptureFixture) -> None:
    password = "correct-horse-battery-staple-42"
    basic = "Basic " + base64.b64encode(f"alice:{password}".encode()).decode()
    with caplog.at_level(logging.DEBUG), nextcloud_api.client(key=None, **appapi("alice"), Authorization=basic) as c:
        ok = c.post("/v1/images/generations", json={"prompt": "x", "size": "256x256"})
        nextcloud_api.local.fail_with = RuntimeError("boom")
        failed = c.post("/v1/images/generations", json={"prompt": "x", "size": "256x256"})
    with caplog.at_level(logging.DEBUG), nextcloud_api.client(key=None, **appapi(""), Authorization=basic) as c:
        anonymous = c.get("/v1/models")  # basic auth that Nextcloud did not accept: anonymous
    assert ok.status_code == 200
    assert failed.status_code == 500
    assert anonymous.status_code == 401
    assert caplog.records  # something was logged, and none of it holds the credentials
    for text in (caplog.text, ok.text, failed.text, anonymous.text):
        assert password not in text
        assert basic.split()[1] not in text


def test_url_through_proxy_points_through_nextcloud(nextcloud_api: Running) -> None:
    with nextcloud_api.client(key=None, **appapi("alice")) as client:
        plain = client.post("/v1/images/generations", json={"prompt": "x", "response_format": "url"})
        forwarded = client.post(
            "/v1/images/generations",
            json={"prompt": "x", "response_format": "url"},
            headers={"X-Forwarded-Host": "cloud.example.com", "X-Forwarded-Proto": "https"},
        )
    url = plain.json()["data"][0]["url"]
    assert url.startswith(f"{nextcloud_api.settings.nextcloud_url}{PROXY}/v1/images/")
    forwarded_url = forwarded.json()["data"][0]["url"]
    assert forwarded_url.startswith(f"https://cloud.example.com{PROXY}/v1/images/")
    image_id = url.rsplit("/", 1)[1]
    # what AppAPI's proxy forwards for that URL: the path after /proxy/<appid>, anonymous AppAPI headers
    with nextcloud_api.client(key=None, **appapi("")) as proxy:
        assert proxy.get(f"/v1/images/{image_id}").status_code == 200


def test_direct_url_uses_forwarded_proto_and_host(api: Running) -> None:
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "images.example.org"}
    with api.client(**headers) as client:
        response = client.post("/v1/images/generations", json={"prompt": "x", "response_format": "url"})
    assert response.json()["data"][0]["url"].startswith("https://images.example.org/v1/images/")


# --- cache and limits ------------------------------------------------------------------------------------------------
def test_cache_hit_with_seed_miss_without(api: Running) -> None:
    body = {"prompt": "a cat", "size": "256x256", "seed": 5}
    with api.client() as client:
        first = client.post("/v1/images/generations", json=body)
        second = client.post("/v1/images/generations", json=body)
        other_size = client.post("/v1/images/generations", json={**body, "size": "512x512"})
        no_cache = client.post("/v1/images/generations", json={**body, "useCache": False})
        unseeded = [client.post("/v1/images/generations", json={"prompt": "a cat", "size": "256x256"}) for _ in "ab"]
    assert [r.headers["X-Cache"] for r in (first, second, other_size, no_cache)] == ["miss", "hit", "miss", "miss"]
    assert second.json()["cached"] is True
    assert second.json()["data"] == first.json()["data"]
    assert [r.headers["X-Cache"] for r in unseeded] == ["miss", "miss"]
    assert unseeded[0].json()["seeds"] != unseeded[1].json()["seeds"]
    assert len(api.local.calls) == 5  # first, other size, no cache, two unseeded


def test_rate_limit_per_caller_is_429_with_retry_after(tmp_path: Path) -> None:
    with serve(standalone_settings(tmp_path, T2I_API_RATE_LIMIT="2")) as running:
        with running.client() as client:
            statuses = [client.post("/v1/images/generations", json={"prompt": "x"}).status_code for _ in range(2)]
            limited = client.post("/v1/images/generations", json={"prompt": "x"})
        with running.client(key="k2") as other:
            other_status = other.post("/v1/images/generations", json={"prompt": "x"}).status_code
    assert statuses == [200, 200]
    error = error_of(limited, 429)
    assert (error["code"], error["type"]) == ("RATE_LIMITED", "rate_limit_error")
    assert 1 <= int(limited.headers["Retry-After"]) <= 30
    assert other_status == 200


# --- url images ------------------------------------------------------------------------------------------------------
def test_url_image_expires_after_ttl(api: Running, tmp_path: Path) -> None:
    with api.client() as client:
        url = client.post("/v1/images/generations", json={"prompt": "x", "response_format": "url"}).json()["data"][0][
            "url"
        ]
        assert httpx2.get(url).status_code == 200
        stored = list((tmp_path / "images").glob("*.png"))
        assert len(stored) == 1
        # an image's age is the store's clock minus its file's mtime: age the file past the TTL instead of waiting
        # (the app builds its ImageStore on the real clock; test_image_store_put_get_and_expiry injects one)
        past = time.time() - api.settings.image_ttl - 1
        os.utime(stored[0], (past, past))
        expired = httpx2.get(url)
    assert error_of(expired, 404)["code"] == "IMAGE_NOT_FOUND"
    assert not stored[0].exists()


@pytest.mark.parametrize("image_id", ["nope", "A" * 43, "..%2F..%2Fetc%2Fpasswd", "generations"])
def test_unknown_image_is_404(shared_api: Running, image_id: str) -> None:
    error = error_of(httpx2.get(f"{shared_api.url}/v1/images/{image_id}"), 404)
    assert error["code"] in ("IMAGE_NOT_FOUND", "HTTP_404")


def test_sweeper_deletes_expired_files_left_by_earlier_process(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    old = folder / f"{'o' * 43}.png"
    old.write_bytes(b"png")
    fresh = folder / f"{'f' * 43}.png"
    fresh.write_bytes(b"png")
    past = time.time() - 7200
    os.utime(old, (past, past))
    with serve(standalone_settings(tmp_path)):
        wait_until(lambda: not old.exists(), 5, "the sweeper did not delete the expired file")
    assert fresh.exists()


# --- operations ------------------------------------------------------------------------------------------------------
class NotReadyBackends(StaticBackends):
    async def ready(self, config: RuntimeConfig) -> bool:
        return False


def test_healthz_and_readyz(api: Running, tmp_path: Path) -> None:
    assert httpx2.get(f"{api.url}/healthz").json() == {"status": "ok"}
    ready = httpx2.get(f"{api.url}/readyz")
    assert (ready.status_code, ready.json()["status"]) == (200, "ready")
    with serve(standalone_settings(tmp_path / "other"), NotReadyBackends()) as running:
        not_ready = httpx2.get(f"{running.url}/readyz")
    assert (not_ready.status_code, not_ready.json()["reason"]) == (503, "BACKEND_NOT_READY")


def test_readyz_when_nextcloud_config_unreachable(tmp_path: Path) -> None:
    environ = {
        "APP_PERSISTENT_STORAGE": str(tmp_path),
        "NEXTCLOUD_URL": f"http://127.0.0.1:{free_port()}",
        "APP_SECRET": SECRET,
        "T2I_NEXTCLOUD_TIMEOUT": "2",
    }
    with serve(load_settings(environ, FIELD_IDS)) as running:
        response = httpx2.get(f"{running.url}/readyz", timeout=30)
        models = httpx2.get(f"{running.url}/v1/models", headers=appapi("alice"), timeout=30)
    assert (response.status_code, response.json()["reason"]) == (503, "NEXTCLOUD_UNAVAILABLE")
    assert error_of(models, 503)["code"] == "NEXTCLOUD_UNAVAILABLE"


def test_metrics_count_requests_images_failures_and_cache(api: Running) -> None:
    with api.client() as client:
        client.post("/v1/images/generations", json={"prompt": "x", "n": 3, "seed": 1})
        client.post("/v1/images/generations", json={"prompt": "x", "n": 3, "seed": 1})  # cache hit
        client.post("/v1/images/generations", json={"prompt": "x", "size": "9x9"})
        api.local.fail_with = GpuOutOfMemoryError("oom")
        client.post("/v1/images/generations", json={"prompt": "x"})
        api.local.fail_with = None
        client.get("/v1/models")
        scrape = httpx2.get(f"{api.url}/metrics")
    assert scrape.status_code == 200
    assert scrape.headers["content-type"].startswith("text/plain")
    samples = parse_metrics(scrape.text)
    route = "/v1/images/generations"
    assert samples[f't2i_http_requests_total{{method="POST",route="{route}",status="200"}}'] == 2
    assert samples[f't2i_http_requests_total{{method="POST",route="{route}",status="400"}}'] == 1
    assert samples[f't2i_http_requests_total{{method="POST",route="{route}",status="500"}}'] == 1
    assert samples['t2i_http_requests_total{method="GET",route="/v1/models",status="200"}'] == 1
    assert samples['t2i_images_generated_total{backend="local",source="api"}'] == 3
    assert samples['t2i_generation_duration_seconds_count{backend="local",source="api"}'] == 1
    assert samples['t2i_generation_failures_total{code="GPU_OUT_OF_MEMORY",source="api"}'] == 1
    assert samples['t2i_api_cache_lookups_total{result="hit"}'] == 1
    assert samples['t2i_api_cache_lookups_total{result="miss"}'] == 1
    assert samples['t2i_generations_in_progress{source="api"}'] == 0


def parse_metrics(text: str) -> dict[str, float]:
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_openapi_documents_v1_without_422(api: Running) -> None:
    schema = httpx2.get(f"{api.url}/openapi.json").json()
    generation = schema["paths"]["/v1/images/generations"]["post"]
    assert set(generation["requestBody"]["content"]) == {
        "application/json",
        "multipart/form-data",
        "application/x-www-form-urlencoded",
    }
    assert {"200", "400", "401", "429", "500", "503"} <= set(generation["responses"])
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            assert "422" not in operation["responses"], path
    assert "/v1/models/{model_id}" in schema["paths"]
    assert "/v1/images/{image_id}" in schema["paths"]
    assert httpx2.get(f"{api.url}/docs").status_code == 200


# --- the pieces of ApiState ------------------------------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_limiter_allows_a_minute_of_requests_then_refills() -> None:
    clock = FakeClock()
    limiter = CallerLimiter(clock=clock)
    for _ in range(3):
        limiter.check("key:a", 3)
    with pytest.raises(RateLimitError) as caught:
        limiter.check("key:a", 3)
    assert caught.value.retry_after == pytest.approx(20.0)
    assert "3 image requests per minute" in caught.value.user_message
    limiter.check("key:b", 3)  # another caller has its own bucket
    clock.now += 20.0
    limiter.check("key:a", 3)
    limiter.check("key:a", 0)  # 0: no limit
    with pytest.raises(RateLimitError):
        limiter.check("key:a", 3)


def test_limiter_forgets_least_recent_callers_beyond_its_bound() -> None:
    limiter = CallerLimiter(clock=FakeClock(), max_callers=2)
    for caller in ("a", "b", "c"):
        limiter.check(caller, 1)
    assert len(limiter) == 2
    limiter.check("a", 1)  # "a" was forgotten, so it has a full bucket again


def _result(png_bytes: int, seed: int = 1) -> GenerationResult:
    image = RenderedImage(b"x" * png_bytes, seed)
    return GenerationResult((image,), "m", "local", ImageSize(64, 64), 0.1)


def test_result_cache_evicts_least_recently_used_by_count_and_bytes() -> None:
    cache = ResultCache(max_entries=2, max_bytes=100)
    cache.put("a", _result(10))
    cache.put("b", _result(10))
    assert cache.get("a") is not None  # "a" is now the most recent
    cache.put("c", _result(10))
    assert (cache.get("a") is not None, cache.get("b"), cache.get("c") is not None) == (True, None, True)
    cache.put("d", _result(95))
    assert len(cache) == 1
    assert cache.bytes == 95
    cache.put("huge", _result(101))  # bigger than the whole cache: not kept
    assert cache.get("huge") is None


def test_cache_key_changes_with_every_image_parameter_but_not_credentials() -> None:
    config = config_from_values({}, {})
    spec = ImageRequest("cat", count=1, size=ImageSize(64, 64), seeds=(1,), steps=2, guidance_scale=1.0)
    key = cache_key(spec, config)
    variants = [
        replace(spec, prompt="dog"),
        replace(spec, size=ImageSize(32, 32)),
        replace(spec, seeds=(2,)),
        replace(spec, steps=3),
        replace(spec, guidance_scale=2.0),
        replace(spec, negative_prompt="blur"),
        replace(spec, model="other"),
        replace(spec, count=2, seeds=(1, 2)),
    ]
    assert len({cache_key(variant, config) for variant in variants} | {key}) == len(variants) + 1
    assert cache_key(spec, config.model_copy(update={"watermark": False})) != key
    assert cache_key(spec, config.model_copy(update={"local_model": "other"})) != key
    same = config.model_copy(update={"api_keys": SecretStr("new"), "api_rate_limit": 5})
    assert cache_key(spec, same) == key


async def test_image_store_put_get_and_expiry(tmp_path: Path) -> None:
    clock = FakeClock()
    store = ImageStore(tmp_path / "images", ttl=60, clock=clock)
    image_id = await store.put(b"png-bytes")
    assert len(image_id) >= 43
    clock.now = time.time() + 10
    png, remaining = await store.get(image_id)
    assert png == b"png-bytes"
    assert 48 <= remaining <= 50.5
    clock.now += 61
    with pytest.raises(NotFoundError):
        await store.get(image_id)
    assert not list((tmp_path / "images").iterdir())
    with pytest.raises(NotFoundError):
        await store.get("../../etc/passwd")
