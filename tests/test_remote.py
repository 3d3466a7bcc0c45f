"""RemoteBackend against the IONOS imitation (a real HTTP server) and, for odd answers, httpx2.MockTransport."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator

import httpx2
import pytest
from PIL import Image
from pydantic import SecretStr

from tests.conftest import wait_until
from tests.fake_ionos import FakeIonos, ionos_account
from text2image_hub.backends import GenerationControl, ResolvedRequest
from text2image_hub.backends.presets import CUSTOM, IONOS, OPENAI, RemoteAccount, RemoteLimits, preset
from text2image_hub.backends.registry import RemoteBackendPool
from text2image_hub.backends.remote import RemoteBackend, RetryPolicy, remote_http_client
from text2image_hub.errors import (
    BackendUnavailableError,
    ConfigurationError,
    GenerationCancelledError,
    RemoteAuthError,
    RemoteBusyError,
    RemoteServiceError,
    RemoteTimeoutError,
    Text2ImageError,
)
from text2image_hub.imaging import ImageSize

TOKEN = "sk-ionos-SECRET-4f9c2a71d3"
FAST_RETRY = RetryPolicy(
    max_attempts=3, backoff_base=0.01, backoff_max=0.05, max_busy_retries=100, default_retry_after=0.05
)
SMALL = ImageSize(512, 512)


def request_for(count: int, *, prompt: str = "a lighthouse at dawn", size: ImageSize = SMALL) -> ResolvedRequest:
    return ResolvedRequest(prompt=prompt, size=size, count=count)


@pytest.fixture
def ionos() -> Iterator[FakeIonos]:
    with FakeIonos(token=TOKEN, time_scale=300) as fake:
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(timeout=httpx2.Timeout(5.0), trust_env=False) as client:
        yield client


def backend_for(fake: FakeIonos, http: httpx2.AsyncClient, **kwargs: object) -> RemoteBackend:
    return RemoteBackend(ionos_account(fake, **kwargs), http, retry=FAST_RETRY)  # type: ignore[arg-type]


def png(size: tuple[int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, (1, 2, 3)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def mock_backend(
    handler: Callable[[httpx2.Request], httpx2.Response], account: RemoteAccount | None = None
) -> RemoteBackend:
    account = account or RemoteAccount.from_preset(CUSTOM, TOKEN, base_url="http://remote.test/v1", model="m")
    client = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    return RemoteBackend(account, client, retry=FAST_RETRY)


async def test_generate_concurrent_tasks_all_succeed_under_rate_limits(
    ionos: FakeIonos, http: httpx2.AsyncClient
) -> None:
    backend = backend_for(ionos, http)
    counts = [random.Random(7 + i).randint(1, 4) for i in range(30)]
    ionos.reset_clock()
    started = time.monotonic()
    results = await asyncio.gather(
        *(
            backend.generate(request_for(count, prompt=f"task {i}"), GenerationControl())
            for i, count in enumerate(counts)
        ),
        return_exceptions=True,
    )
    elapsed = time.monotonic() - started
    failures = [result for result in results if isinstance(result, BaseException)]
    assert failures == []
    total = sum(counts)
    assert [len(result) for result in results] == counts  # type: ignore[arg-type]
    assert all(image.image.size == (512, 512) for result in results for image in result)  # type: ignore[union-attr]
    stats = ionos.stats()
    assert stats.images == total
    optimum = (total - ionos.burst) / (ionos.images_per_minute * ionos.time_scale / 60)
    assert elapsed >= optimum * 0.9  # the limiter, not luck, kept the server happy
    assert stats.rate_limited <= 3


async def test_generate_claims_no_seed_the_service_never_got(ionos: FakeIonos, http: httpx2.AsyncClient) -> None:
    control = GenerationControl()
    backend = backend_for(ionos, http)
    images = await backend.generate(request_for(3), control)
    assert [image.seed for image in images] == [None, None, None]
    assert all("seed" not in body for body in ionos.bodies())
    assert backend.model.accepts_seed is False
    assert control.progress == 1.0


async def test_generate_fans_out_into_single_image_requests(ionos: FakeIonos, http: httpx2.AsyncClient) -> None:
    images = await backend_for(ionos, http).generate(request_for(4), GenerationControl())
    assert len(images) == 4
    bodies = ionos.bodies()
    assert len(bodies) == 4
    for body in bodies:
        assert body == {"model": IONOS.model, "prompt": "a lighthouse at dawn", "size": "512x512", "n": 1}


async def test_generate_bad_token_raises_remote_auth_error(ionos: FakeIonos, http: httpx2.AsyncClient) -> None:
    backend = backend_for(ionos, http, token="wrong-token")
    with pytest.raises(RemoteAuthError) as caught:
        await backend.generate(request_for(1), GenerationControl())
    assert caught.value.user_message.startswith(
        "The IONOS image service refused this server's access: please ask your administrator"
    )
    assert "paas-auth-1: Unauthorized" in str(caught.value)
    assert ionos.stats().requests == 1  # no retry


async def test_generate_bad_openai_token_names_openai() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(
            401, json={"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}}
        )

    account = RemoteAccount.from_preset(OPENAI, "sk-wrong", base_url="http://remote.test/v1")
    with pytest.raises(RemoteAuthError) as caught:
        await mock_backend(handler, account).generate(request_for(1, size=ImageSize(1024, 1024)), GenerationControl())
    assert caught.value.user_message.startswith(
        "The OpenAI image service refused this server's access: please ask your administrator"
    )
    assert "Incorrect API key provided (invalid_api_key)" in str(caught.value)


async def test_generate_prompt_at_limit_is_sent_whole(ionos: FakeIonos, http: httpx2.AsyncClient) -> None:
    await backend_for(ionos, http).generate(request_for(1, prompt="y" * 256), GenerationControl())
    assert ionos.bodies()[0]["prompt"] == "y" * 256


async def test_generate_downloads_images_answered_as_url(http: httpx2.AsyncClient) -> None:
    with FakeIonos(token=TOKEN, time_scale=300, answer="url") as fake:
        images = await backend_for(fake, http).generate(request_for(2), GenerationControl())
        stats = fake.stats()
    assert [image.image.size for image in images] == [(512, 512), (512, 512)]
    assert stats.downloads == 2


async def test_generate_retries_after_server_error(ionos: FakeIonos, http: httpx2.AsyncClient) -> None:
    ionos.fail_next(500, 1)
    images = await backend_for(ionos, http).generate(request_for(1), GenerationControl())
    assert len(images) == 1
    stats = ionos.stats()
    assert (stats.server_errors, stats.requests, stats.images) == (1, 2, 1)


async def test_generate_gives_up_after_repeated_server_errors(ionos: FakeIonos, http: httpx2.AsyncClient) -> None:
    ionos.fail_next(503, 10)
    with pytest.raises(RemoteServiceError, match="after 3 attempts") as caught:
        await backend_for(ionos, http).generate(request_for(1), GenerationControl())
    assert "paas-internal-1" in str(caught.value)
    assert ionos.stats().requests == 3


async def test_generate_is_not_sent_again_after_a_read_timeout(ionos: FakeIonos) -> None:
    ionos.hang_next(5.0, 1)
    async with httpx2.AsyncClient(timeout=httpx2.Timeout(0.5), trust_env=False) as client:
        with pytest.raises(RemoteTimeoutError, match="not sent again"):
            await backend_for(ionos, client).generate(request_for(1), GenerationControl())
    stats = ionos.stats()
    assert (stats.hung, stats.requests) == (1, 1), "a generation that may have reached the service is paid once"


async def test_generate_unreachable_service_raises_backend_unavailable(http: httpx2.AsyncClient) -> None:
    fake = FakeIonos(token=TOKEN)
    with fake:
        account = ionos_account(fake)
    with pytest.raises(BackendUnavailableError, match="unreachable"):  # the server is gone
        await RemoteBackend(account, http, retry=FAST_RETRY).generate(request_for(1), GenerationControl())


async def test_generate_honours_retry_after_when_server_is_stricter(http: httpx2.AsyncClient) -> None:
    # No client-side limit: the server's 429s + Retry-After alone must pace us (10 images/s real, burst 2).
    with FakeIonos(token=TOKEN, images_per_minute=10, burst=2, requests_per_second=1000, time_scale=60) as fake:
        backend = backend_for(fake, http, client_limits=False)
        started = time.monotonic()
        images = await backend.generate(request_for(6), GenerationControl())
        elapsed = time.monotonic() - started
        stats = fake.stats()
    assert len(images) == 6
    assert stats.rate_limited >= 1
    assert stats.images == 6
    assert elapsed >= (6 - 2) / 10 * 0.9


async def test_generate_busy_after_retries_raises_remote_busy(ionos: FakeIonos, http: httpx2.AsyncClient) -> None:
    ionos.fail_next(429, 10)
    backend = RemoteBackend(ionos_account(ionos), http, retry=dataclasses.replace(FAST_RETRY, max_busy_retries=2))
    with pytest.raises(RemoteBusyError) as caught:
        await backend.generate(request_for(1), GenerationControl())
    assert caught.value.user_message == "The image service is busy, try again in a minute."
    assert ionos.stats().rate_limited == 3


async def test_generate_caps_retry_after() -> None:
    calls: list[float] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        calls.append(time.monotonic())
        if len(calls) == 1:
            return httpx2.Response(429, headers={"Retry-After": "3600"}, text="slow down")
        return httpx2.Response(200, json={"data": [{"b64_json": png((512, 512))}]})

    backend = mock_backend(handler)
    backend = RemoteBackend(
        backend.account,
        httpx2.AsyncClient(transport=httpx2.MockTransport(handler)),
        retry=dataclasses.replace(FAST_RETRY, max_retry_after=0.2),
    )
    await backend.generate(request_for(1), GenerationControl())
    assert 0.15 <= calls[1] - calls[0] < 2


@pytest.mark.parametrize(("retry_after", "min_seconds", "max_seconds"), [("0.01", 0.0, 0.08), ("0.2", 0.2, 1.0)])
async def test_generate_short_retry_after_does_not_pay_twice(
    retry_after: str, min_seconds: float, max_seconds: float
) -> None:
    # One image per 0.1 s, burst 1. A 429 shorter than that interval is retried at once without taking another
    # image from the limiter; one of an interval or more pays again (the service counts images we did not).
    calls: list[float] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        calls.append(time.monotonic())
        if len(calls) == 1:
            return httpx2.Response(429, headers={"Retry-After": retry_after}, text="busy")
        return httpx2.Response(200, json={"data": [{"b64_json": png((512, 512))}]})

    limits = RemoteLimits(600, 1, None, None, 1)
    account = dataclasses.replace(
        RemoteAccount.from_preset(CUSTOM, TOKEN, base_url="http://remote.test/v1", model="m"), limits=limits
    )
    backend = mock_backend(handler, account)
    started = time.monotonic()
    await backend.generate(request_for(1), GenerationControl())
    assert min_seconds <= time.monotonic() - started < max_seconds
    assert len(calls) == 2


async def test_generate_never_leaks_the_token(
    ionos: FakeIonos, http: httpx2.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    backend = backend_for(ionos, http)
    ionos.fail_next(500, 1)
    ionos.fail_next(429, 1)
    await backend.generate(request_for(2), GenerationControl())
    await backend.list_models()
    errors: list[Text2ImageError] = []
    for token in (TOKEN + "x", TOKEN):
        with FakeIonos(token=token) as other:
            bad = RemoteBackend(ionos_account(other, token=TOKEN if token != TOKEN else "nope"), http, retry=FAST_RETRY)
            with pytest.raises(RemoteAuthError) as auth_failure:
                await bad.generate(request_for(1), GenerationControl())
            errors.append(auth_failure.value)

    def echo(request: httpx2.Request) -> httpx2.Response:  # a server that quotes the token back
        return httpx2.Response(400, text=f"bad header {request.headers['authorization']}")

    with pytest.raises(RemoteServiceError) as caught:
        await mock_backend(echo).generate(request_for(1), GenerationControl())
    errors.append(caught.value)
    assert len(caplog.records) > 0
    texts = [caplog.text, repr(backend), repr(backend.account), str(backend.account)]
    texts += [text for error in errors for text in (str(error), repr(error), error.user_message, repr(error.args))]
    for text in texts:
        assert TOKEN not in text


async def test_generate_sends_no_seed_or_response_format_to_ionos(ionos: FakeIonos, http: httpx2.AsyncClient) -> None:
    await backend_for(ionos, http).generate(request_for(1), GenerationControl())
    assert set(ionos.bodies()[0]) == {"model", "prompt", "size", "n"}


async def test_generate_sends_seed_when_preset_accepts_it() -> None:
    bodies: list[dict[str, object]] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        bodies.append(json.loads(request.content))
        return httpx2.Response(200, json={"data": [{"b64_json": png((512, 512))}]})

    seeded = dataclasses.replace(CUSTOM, accepts_seed=True, response_format="b64_json")
    account = RemoteAccount.from_preset(seeded, TOKEN, base_url="http://remote.test/v1", model="m")
    backend = mock_backend(handler, account)
    assert backend.model.accepts_seed is True
    request = dataclasses.replace(request_for(2), seeds=(100, 101))
    images = await backend.generate(request, GenerationControl())
    assert [body["seed"] for body in bodies] == [100, 101]
    assert [image.seed for image in images] == [100, 101]
    assert all(body["response_format"] == "b64_json" for body in bodies)


async def test_generate_batches_up_to_max_images_per_request() -> None:
    sizes: list[object] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        n = json.loads(request.content)["n"]
        sizes.append(n)
        return httpx2.Response(200, json={"data": [{"b64_json": png((1024, 1024))}] * n})

    account = RemoteAccount.from_preset(OPENAI, TOKEN, base_url="http://remote.test/v1")
    images = await mock_backend(handler, account).generate(
        request_for(12, size=ImageSize(1024, 1024)), GenerationControl()
    )
    assert len(images) == 12
    assert sorted(sizes) == [2, 10]  # type: ignore[type-var]


async def test_generate_image_of_wrong_size_raises_remote_service_error() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, json={"data": [{"b64_json": png((64, 64))}]})

    with pytest.raises(RemoteServiceError, match="it is 64x64 where 512x512 was asked for"):
        await mock_backend(handler).generate(request_for(1), GenerationControl())


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ([{"b64_json": base64.b64encode(b"not an image").decode()}], "does not decode"),
        ([{"b64_json": "%%%"}], "invalid base64"),
        ([{"revised_prompt": "x"}], "neither b64_json nor url"),
        ([], "0 image"),
    ],
)
async def test_generate_bad_image_data_raises_remote_service_error(data: list[object], match: str) -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, json={"data": data})

    with pytest.raises(RemoteServiceError, match=match):
        await mock_backend(handler).generate(request_for(1), GenerationControl())


@pytest.mark.parametrize(
    ("status", "body", "detail"),
    [
        (
            400,
            {"error": {"message": "Your request was rejected by the safety system", "code": "moderation_blocked"}},
            "Your request was rejected by the safety system (moderation_blocked)",
        ),
        (
            422,
            {"httpStatus": 422, "messages": [{"errorCode": "paas-validation-1", "message": "size invalid"}]},
            "paas-validation-1: size invalid",
        ),
        (404, "no such route", "no such route"),
    ],
)
async def test_generate_client_error_is_not_retried_and_quotes_server(status: int, body: object, detail: str) -> None:
    calls: list[int] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        calls.append(1)
        if isinstance(body, str):
            return httpx2.Response(status, text=body)
        return httpx2.Response(status, json=body)

    with pytest.raises(RemoteServiceError) as caught:
        await mock_backend(handler).generate(request_for(1), GenerationControl())
    assert detail in str(caught.value)
    assert f"HTTP {status}" in str(caught.value)
    assert calls == [1]


async def test_generate_stops_starting_requests_when_cancelled(http: httpx2.AsyncClient) -> None:
    with FakeIonos(token=TOKEN, images_per_minute=6, burst=1, time_scale=1) as fake:  # one image per 10 real seconds
        backend = backend_for(fake, http)
        control = GenerationControl()
        job = asyncio.create_task(backend.generate(request_for(4), control))
        # the first image is made at once, the next ones wait 10 s each (polled from a thread: the job runs here)
        await asyncio.to_thread(wait_until, lambda: fake.stats().images >= 1, 5, "the first image was not made")
        control.cancel()
        started = time.monotonic()
        with pytest.raises(GenerationCancelledError):
            await job
        # Noticed while waiting for the limiter (it looks every 0.25 s): a generation that noticed the cancel only
        # once the limiter let the next images go would take 10 s or more here (30 s measured), and fail this bound.
        assert time.monotonic() - started < 5
        assert fake.stats().requests == 1


async def test_list_models_returns_model_ids(ionos: FakeIonos, http: httpx2.AsyncClient) -> None:
    models = await backend_for(ionos, http).list_models()
    assert IONOS.model in models


async def test_list_models_bad_token_raises_remote_auth_error(ionos: FakeIonos, http: httpx2.AsyncClient) -> None:
    with pytest.raises(RemoteAuthError):
        await backend_for(ionos, http, token="nope").list_models()


def test_model_info_describes_the_ionos_preset() -> None:
    account = RemoteAccount.from_preset(IONOS, TOKEN)
    backend = RemoteBackend(account, httpx2.AsyncClient())
    info = backend.model
    assert backend.name == "remote"
    assert (info.id, info.backend, info.max_prompt_length) == ("black-forest-labs/FLUX.1-schnell", "remote", 256)
    assert ImageSize(1024, 1024) in info.sizes
    assert info.default_size == ImageSize(1024, 1024)
    assert info.seconds_per_image == pytest.approx(6.0)
    limiter = backend.limiter
    assert (limiter.images_per_minute, limiter.burst, limiter.requests_per_second) == (10, 20, 5)


def test_pool_shares_one_backend_per_account() -> None:
    pool = RemoteBackendPool(httpx2.AsyncClient())
    first = pool.backend_for(RemoteAccount.from_preset(IONOS, TOKEN))
    assert pool.backend_for(RemoteAccount.from_preset(IONOS, TOKEN)) is first
    assert pool.backend_for(RemoteAccount.from_preset(IONOS, TOKEN + "2")) is not first
    assert pool.backend_for(RemoteAccount.from_preset(IONOS, TOKEN, model="other/model")) is not first


def test_pool_gives_a_new_limiter_when_the_limits_change() -> None:
    pool = RemoteBackendPool(httpx2.AsyncClient())
    first = pool.backend_for(RemoteAccount.from_preset(IONOS, TOKEN))
    faster = pool.backend_for(RemoteAccount.from_preset(IONOS, TOKEN, images_per_minute=20))
    assert faster.limiter is not first.limiter


def test_account_from_preset_applies_admin_overrides() -> None:
    account = RemoteAccount.from_preset(
        IONOS, TOKEN, base_url="https://example.test/v1/", images_per_minute=30, burst=5
    )
    assert account.base_url == "https://example.test/v1"
    assert account.limits == RemoteLimits(30, 5, 5, 256, 1)
    assert account.api_key == SecretStr(TOKEN)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"source": IONOS, "api_key": ""}, "remote_api_key"),
        ({"source": CUSTOM, "api_key": TOKEN, "model": "m"}, "remote_base_url"),
        ({"source": CUSTOM, "api_key": TOKEN, "base_url": "ftp://x", "model": "m"}, "remote_base_url"),
        ({"source": CUSTOM, "api_key": TOKEN, "base_url": "http://x/v1"}, "remote_model"),
    ],
)
def test_account_from_preset_missing_setting_raises_configuration_error(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        RemoteAccount.from_preset(**kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_preset_by_id() -> None:
    assert preset("ionos") is IONOS
    assert preset("openai") is OPENAI
    assert preset("custom") is CUSTOM
    with pytest.raises(ConfigurationError) as caught:
        preset("dall-e")
    assert caught.value.field == "remote_preset"


async def test_remote_http_client_has_explicit_timeouts() -> None:
    async with remote_http_client() as client:
        assert (client.timeout.connect, client.timeout.read) == (10.0, 120.0)


async def test_more_requests_than_32_are_in_flight_when_the_limits_allow_them() -> None:
    # a service allowing a burst of 100 and taking 1 s an image: 48 images at once take about 1 s, not 2 (a pool of
    # 32 connections held back what the limiter had let through)
    with FakeIonos(token=TOKEN, burst=100, images_per_minute=6000, requests_per_second=1000, latency=1.0) as fake:
        async with remote_http_client() as http:
            backend = backend_for(fake, http)
            started = time.monotonic()
            results = await asyncio.gather(
                *(backend.generate(request_for(12, size=ImageSize(256, 256)), GenerationControl()) for _ in range(4))
            )
            elapsed = time.monotonic() - started
    assert [len(images) for images in results] == [12] * 4
    assert fake.stats().rate_limited == 0
    assert elapsed < 1.8
