"""Nextcloud's ``integration_openai`` against /v1: its requests replayed byte for byte, then the official openai client.

An admin can point ``integration_openai`` (Nextcloud's "OpenAI and LocalAI integration") at this app's /v1 as its
OpenAI-compatible service. These tests send what it sends and check the answers for what it reads, so that a change
here cannot silently switch its image provider off again (issue 12: the 404 for its made-up model did exactly that).

Read from ``nextcloud/integration_openai`` (public source, through the code search tool):

- ``lib/Service/OpenAiAPIService.php``, the 4.x generation (per-type service overrides, ``getRequestContext()``,
  ``UserFacingProcessingException``): ``request()``, ``getModels()``, ``requestImageCreation()``,
  ``isT2IAvailable()`` / ``autoDetectFeatures()``. The 3.x file (commit 05d4bb26) and the multi-service 6.x file
  make the same feature check; 6.x may leave ``model`` out of the generation body.
- ``lib/TaskProcessing/TextToImageProvider.php`` (commit 1280f78d, the watermarking provider): ``process()``,
  lines 109-169.
- ``lib/Controller/ConfigController.php`` (commit 05d4bb26): ``autoDetectFeatures()``, what the admin page calls.
- ``lib/AppInfo/Application.php`` (commit 05d4bb26): ``USER_AGENT``, ``DEFAULT_IMAGE_MODEL_ID``,
  ``DEFAULT_DEFAULT_IMAGE_SIZE``, ``OPENAI_DEFAULT_REQUEST_TIMEOUT``.
- Nextcloud server's ``lib/private/Http/Client/Client.php``: ``buildRequestOptions()`` adds ``Accept-Encoding``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest

from tests.test_api import KEY, Running, png_size, serve, standalone_settings

# --- what integration_openai sends ------------------------------------------------------------------------------------
# Application.php: USER_AGENT. OpenAiAPIService::request() sets it on every request.
USER_AGENT = "Nextcloud OpenAI/LocalAI integration"
# Application.php: OPENAI_DEFAULT_REQUEST_TIMEOUT = 60 * 4, the default of the admin's "request timeout".
REQUEST_TIMEOUT = 240.0
# OpenAiAPIService::request(): User-Agent always; "Authorization: Bearer <key>" when the admin saved an API key (and
# chose no basic auth); "Content-Type: application/json" whenever no other type is asked for, so also on the GET of
# the model list, which has no body. Nextcloud's own HTTP client (Client::buildRequestOptions()) adds
# "Accept-Encoding: gzip" ("br, gzip" with the brotli extension) and no Accept header.
HEADERS = {
    "User-Agent": USER_AGENT,
    "Authorization": f"Bearer {KEY}",
    "Content-Type": "application/json",
    "Accept-Encoding": "gzip",
}
# OpenAiAPIService::getModels($userId, refresh: true) -> request($userId, 'models'): GET <service url>/models, no
# query (the params are empty). The admin page and the daily Cron/RefreshModels job refresh it this way.
MODELS_PATH = "/v1/models"
# OpenAiAPIService::requestImageCreation() -> request(..., 'images/generations', $params, 'POST').
GENERATIONS_PATH = "/v1/images/generations"
# OpenAiAPIService::isT2IAvailable(), called by autoDetectFeatures() (ConfigController::autoDetectFeatures(), the
# admin page's feature check): POST images/generations with exactly this body, with the admin's credentials.
FEATURE_CHECK_BODY: dict[str, Any] = {"prompt": "a", "model": "invalid-model"}
# isT2IAvailable(): `return $e->getCode() !== 404 && $e->getCode() !== 401;` where the code is the HTTP status of the
# refused request; any answer without an exception (2xx) also means "available". The body is read only for
# error.message, which goes into the exception's text.
T2I_OFF_STATUSES = (401, 404)
# Application.php: DEFAULT_MODEL_ID 'Default' is sent as DEFAULT_IMAGE_MODEL_ID; DEFAULT_DEFAULT_IMAGE_SIZE is the
# size when neither the admin (default_image_size) nor the task gives one.
DEFAULT_MODEL = "dall-e-2"
DEFAULT_SIZE = "1024x1024"
LISTED_MODEL = "test/instant"  # what the admin picks from our model list (the instant backend's model)


def generation_body(n: int, size: str = DEFAULT_SIZE, model: str | None = DEFAULT_MODEL) -> dict[str, Any]:
    """requestImageCreation()'s $params, in its key order: prompt, size, n, model; never response_format, quality,
    style or user. TextToImageProvider::process() passes numberOfImages as n (only checked to be an int, no bound
    of its own) and a task size only if it matches ``^\\d+x\\d+$``. The 6.x generation may drop ``model``."""
    body: dict[str, Any] = {"prompt": "a lighthouse on a cliff at dawn", "size": size, "n": n}
    if model is not None:
        body["model"] = model
    return body


def php_json(value: dict[str, Any]) -> bytes:
    """PHP's json_encode() with no flags: compact, ``/`` escaped as ``\\/``, non-ASCII as ``\\uXXXX``."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True).replace("/", "\\/").encode()


def replay(api: Running, method: str, path: str, body: dict[str, Any] | None = None) -> httpx2.Response:
    """One request as integration_openai's Guzzle client sends it (no body when there are no params)."""
    with httpx2.Client(base_url=api.url, timeout=REQUEST_TIMEOUT) as client:
        del client.headers["accept"]  # Guzzle sends none
        return client.request(method, path, headers=HEADERS, content=None if body is None else php_json(body))


# --- what integration_openai reads ------------------------------------------------------------------------------------
def parsed_as_json(response: httpx2.Response) -> Any:
    """OpenAiAPIService::request() decodes a body only when Content-Type starts with application/json (else the
    caller gets ``['body' => ...]`` and finds no ``data``)."""
    assert response.headers["content-type"].lower().startswith("application/json"), response.headers
    return response.json()


def t2i_available(response: httpx2.Response) -> bool:
    """OpenAiAPIService::isT2IAvailable() for the answer to FEATURE_CHECK_BODY: a 2xx throws nothing (available), a
    refusal is "unavailable" only when it is a 401 or a 404."""
    return response.status_code not in T2I_OFF_STATUSES


def kept_images(body: Any) -> list[bytes]:
    """TextToImageProvider::process(): ``data`` must be an array (requestImageCreation() checks it); every
    ``b64_json`` is base64-decoded into an image and every ``url`` is downloaded into another one, so an item with
    both would count twice. With response_format absent the answer must carry b64_json only."""
    assert isinstance(body, dict)
    data = body["data"]
    assert isinstance(data, list)
    assert all(isinstance(item, dict) for item in data)
    assert [item.get("url") for item in data if item.get("url") is not None] == []
    b64s = [item.get("b64_json") for item in data]
    assert all(isinstance(b64, str) for b64 in b64s), b64s
    return [base64.b64decode(b64, validate=True) for b64 in b64s]


@pytest.fixture(scope="module")
def compat_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """The app standalone with bearer keys, as an admin points integration_openai at it."""
    with serve(standalone_settings(tmp_path_factory.mktemp("compat"))) as running:
        yield running


# --- integration_openai, replayed -------------------------------------------------------------------------------------
def test_model_listing_is_a_non_empty_list_of_ids(compat_api: Running) -> None:
    response = replay(compat_api, "GET", MODELS_PATH)
    assert response.status_code == 200, response.text
    body = parsed_as_json(response)
    # getModels(): no top-level 'error'; 'data' (or the whole answer) must be a non-empty JSON list whose items all
    # have an 'id' (isModelListValid()); getModelEnumValues() offers each data[].id as a model choice.
    assert "error" not in body
    models = body["data"]
    assert isinstance(models, list)
    assert models
    ids = [model["id"] for model in models]
    assert all(isinstance(model_id, str) and model_id for model_id in ids)
    assert LISTED_MODEL in ids


def test_feature_check_with_made_up_model_keeps_image_generation_on(compat_api: Running) -> None:
    calls_before = len(compat_api.local.calls)
    response = replay(compat_api, "POST", GENERATIONS_PATH, FEATURE_CHECK_BODY)
    assert t2i_available(response), f"integration_openai would switch image generation off: {response.status_code}"
    assert response.status_code == 400, response.text
    body = parsed_as_json(response)
    assert set(body) == {"error"}
    error = body["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "MODEL_NOT_FOUND", "model")
    assert isinstance(error["message"], str)
    assert error["message"]  # request() puts error.message into its exception
    assert len(compat_api.local.calls) == calls_before  # refused before any image is made


def test_feature_check_with_wrong_key_reads_as_no_image_api(compat_api: Running) -> None:
    """The check runs with the admin's saved key: without a valid one the 401 switches image generation off, so the
    key has to be saved before the admin page checks features."""
    with httpx2.Client(base_url=compat_api.url, timeout=REQUEST_TIMEOUT) as client:
        headers = {**HEADERS, "Authorization": "Bearer not-a-key"}
        response = client.post(GENERATIONS_PATH, headers=headers, content=php_json(FEATURE_CHECK_BODY))
    assert response.status_code == 401, response.text
    assert not t2i_available(response)


@pytest.mark.parametrize("n", [1, 3, 11, 12])
def test_generation_returns_n_images_integration_openai_keeps(compat_api: Running, n: int) -> None:
    response = replay(compat_api, "POST", GENERATIONS_PATH, generation_body(n))
    assert response.status_code == 200, response.text
    images = kept_images(parsed_as_json(response))
    assert len(images) == n
    assert all(png_size(image) == (1024, 1024) for image in images)


@pytest.mark.parametrize("size", ["1024x1024", "512x512", "256x256", "1024x768"])
def test_generation_size_as_sent_is_width_x_height(compat_api: Running, size: str) -> None:
    response = replay(compat_api, "POST", GENERATIONS_PATH, generation_body(1, size=size, model=LISTED_MODEL))
    assert response.status_code == 200, response.text
    (image,) = kept_images(parsed_as_json(response))
    width, height = (int(part) for part in size.split("x"))
    assert png_size(image) == (width, height)


@pytest.mark.parametrize("model", [DEFAULT_MODEL, LISTED_MODEL, None], ids=["default", "listed", "omitted"])
def test_generation_model_as_sent_uses_the_model(compat_api: Running, model: str | None) -> None:
    response = replay(compat_api, "POST", GENERATIONS_PATH, generation_body(2, model=model))
    assert response.status_code == 200, response.text
    body = parsed_as_json(response)
    assert len(kept_images(body)) == 2
    assert body["model"] == LISTED_MODEL


# --- the official openai client ---------------------------------------------------------------------------------------
@pytest.fixture
def client(compat_api: Running) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{compat_api.url}/v1", api_key=KEY, max_retries=0) as sdk:
        yield sdk


def test_openai_client_generates_twelve_images(client: openai.OpenAI) -> None:
    result = client.images.generate(prompt="a red fox", n=12, size="256x256", model=DEFAULT_MODEL)
    data = result.data or []
    assert len(data) == 12
    for image in data:
        assert image.url is None
        assert image.b64_json is not None
        assert png_size(base64.b64decode(image.b64_json)) == (256, 256)


def test_openai_client_unknown_model_is_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(prompt="a", model="invalid-model")
    assert caught.value.status_code == 400
    assert caught.value.code == "MODEL_NOT_FOUND"
    assert caught.value.param == "model"
    assert caught.value.type == "invalid_request_error"


def test_openai_client_lists_models(client: openai.OpenAI) -> None:
    models = list(client.models.list())
    assert [model.id for model in models][:1] == [LISTED_MODEL]
    assert all(model.object == "model" for model in models)
    assert client.models.retrieve(LISTED_MODEL).id == LISTED_MODEL
