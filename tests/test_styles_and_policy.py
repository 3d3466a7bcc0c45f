"""Styles (prompt templates fitted to the model and its prompt limit) and the admin's prompt policy (blocked terms),
through the service, real tasks (fake Nextcloud, IONOS imitation) and /v1."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ExAppRunner
from tests.fake_ionos import FakeIonos
from tests.instant_backend import InstantBackend, StaticBackends
from tests.pngs import open_png
from tests.test_api import serve, standalone_settings
from tests.test_remote_tasks import FAILED, SUCCESS, _save_token, _start
from text2image_hub.admin import RuntimeConfig, config_from_values
from text2image_hub.api.limits import cache_key
from text2image_hub.errors import ConfigurationError, InvalidRequestError
from text2image_hub.i18n import Catalog
from text2image_hub.policy import DEFAULT_BLOCKED_MESSAGE, PromptPolicy, PromptRejectedError, compile_terms
from text2image_hub.service import ImageRequest, ImageService
from text2image_hub.styles import STYLES

WATERCOLOUR = next(style for style in STYLES if style.id == "watercolour")


@pytest.fixture
def ionos() -> Iterator[FakeIonos]:
    with FakeIonos(time_scale=60) as fake:
        yield fake


def _config(**values: str) -> RuntimeConfig:
    return config_from_values(values, {}, automatic="local")


async def _resolved_prompt(backend: InstantBackend, asked: ImageRequest, config: RuntimeConfig) -> tuple[str, str]:
    backends = StaticBackends(local_backend=backend)
    await ImageService(backends, "1.0.0").generate(asked, config)
    call = backend.calls[-1]
    return call.prompt, call.negative_prompt or ""


# --- styles ----------------------------------------------------------------------------------------------------------


async def test_a_style_is_written_as_tags_with_a_negative_prompt_for_a_model_with_guidance():
    prompt, negative = await _resolved_prompt(
        InstantBackend(), ImageRequest("a fox", negative_prompt="text", style="watercolour"), _config()
    )
    assert prompt == "a fox" + WATERCOLOUR.tags
    assert negative == f"text, {WATERCOLOUR.negative}"


async def test_a_style_is_a_phrase_for_a_model_prompted_in_sentences():
    remote_like = InstantBackend(backend_name="remote")  # no negative prompt, like FLUX on IONOS
    prompt, negative = await _resolved_prompt(remote_like, ImageRequest("a fox", style="Watercolour"), _config())
    assert prompt == "a fox" + WATERCOLOUR.phrase
    assert negative == ""


@pytest.mark.parametrize("no_style", [None, "", "none", "vivid", "natural"])
async def test_no_style_and_openais_styles_leave_the_prompt_as_written(no_style: str | None):
    prompt, negative = await _resolved_prompt(InstantBackend(), ImageRequest("a fox", style=no_style), _config())
    assert (prompt, negative) == ("a fox", "")


async def test_an_unknown_style_is_refused_naming_the_styles():
    with pytest.raises(InvalidRequestError) as caught:
        await _resolved_prompt(InstantBackend(), ImageRequest("a fox", style="cubism"), _config())
    assert caught.value.code == "INVALID_STYLE"
    assert "watercolour" in caught.value.user_message


async def test_styles_turned_off_refuse_on_the_api_and_are_dropped_from_a_task():
    off = _config(styles="false")
    with pytest.raises(InvalidRequestError) as caught:
        await _resolved_prompt(InstantBackend(), ImageRequest("a fox", style="anime", source="api"), off)
    assert caught.value.code == "STYLES_DISABLED"
    # a task from before the switch (the provider no longer offers styles) runs with its prompt as written
    assert await _resolved_prompt(InstantBackend(), ImageRequest("a fox", style="anime"), off) == ("a fox", "")


async def test_the_png_metadata_records_the_style():
    backends = StaticBackends()
    result = await ImageService(backends, "1.0.0").generate(ImageRequest("a fox", style="pixel_art"), _config())
    assert open_png(result.images[0].png).text["Style"] == "pixel_art"
    plain = await ImageService(backends, "1.0.0").generate(ImageRequest("a fox"), _config())
    assert "Style" not in open_png(plain.images[0].png).text


def test_the_result_cache_tells_styles_apart():
    config = _config()
    plain = ImageRequest("a fox", seeds=(1,), source="api")
    assert cache_key(plain, config) != cache_key(ImageRequest("a fox", seeds=(1,), source="api", style="anime"), config)


def test_the_style_counts_against_the_ionos_prompt_limit(exapp: ExAppRunner, ionos: FakeIonos):
    nextcloud = _start(exapp, ionos)
    _save_token(nextcloud, ionos.token)
    prompt = "a quiet harbour at dawn " * 10  # 240 characters: fits alone, not with the style's words
    refused = nextcloud.wait_for_task(nextcloud.schedule({"input": prompt, "style": "watercolour"}), timeout=30)
    assert refused["status"] == FAILED
    assert "256" in refused["userFacingErrorMessage"]
    assert "watercolour" in refused["userFacingErrorMessage"]
    assert ionos.stats().requests == 0

    nextcloud.save_setting("prompt_length_policy", "truncate")
    done = nextcloud.wait_for_task(nextcloud.schedule({"input": prompt, "style": "watercolour"}), timeout=30)
    assert done["status"] == SUCCESS
    sent = ionos.bodies()[-1]["prompt"]
    assert len(sent) <= 256
    assert sent.endswith(WATERCOLOUR.phrase)  # the user's part was shortened, the style kept
    assert sent.startswith("a quiet harbour at dawn")
    image = open_png(nextcloud.file(done["id"], done["output"]["images"][0]))
    assert image.text["Style"] == "watercolour"


def test_the_api_takes_our_styles_and_openais(tmp_path: Path):
    with serve(standalone_settings(tmp_path)) as api, api.client() as client:
        styled = client.post("/v1/images/generations", json={"prompt": "a fox", "style": "line_drawing"})
        openai_style = client.post("/v1/images/generations", json={"prompt": "a fox", "style": "vivid"})
        unknown = client.post("/v1/images/generations", json={"prompt": "a fox", "style": "cubism"})
        models = client.get("/v1/models").json()
    assert styled.status_code == 200
    assert api.local.calls[0].prompt.endswith(next(s.tags for s in STYLES if s.id == "line_drawing"))
    assert openai_style.status_code == 200
    assert api.local.calls[1].prompt == "a fox"
    assert unknown.status_code == 400
    assert unknown.json()["error"]["code"] == "INVALID_STYLE"
    assert unknown.json()["error"]["param"] == "style"
    assert "watercolour" in models["data"][0]["capabilities"]["styles"]


# --- the prompt policy -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("terms", "prompt", "blocked"),
    [
        ("gore", "Some GORE here", True),
        ("gore", "gorens and gorey", False),  # whole words only
        ("blood bath", "a  Blood\tBath scene", True),  # the words of a term, any spacing
        ("cat; dog\nbird", "a bird", True),  # separated by ';' or new lines
        ("cat; dog", "a cow", False),
        (r"re:\bcelebrit(y|ies)\b", "two Celebrities", True),
        (r"re:^draw", "a drawing", False),
        ("Straße", "eine STRASSE", False),  # no case folding beyond lower/upper
        ("Straße", "eine straße", True),
        ("", "anything", False),
    ],
)
def test_blocked_terms_match_whole_words_in_any_case(terms: str, prompt: str, blocked: bool):
    policy = PromptPolicy.from_settings(terms, "")
    if blocked:
        with pytest.raises(PromptRejectedError):
            policy.check(prompt)
    else:
        policy.check(prompt)


def test_an_invalid_regular_expression_is_a_setting_error_naming_the_field():
    with pytest.raises(ValueError, match="invalid"):
        compile_terms("re:(unclosed")
    with pytest.raises(ConfigurationError) as caught:
        _config(blocked_terms="fine; re:(unclosed")
    assert caught.value.field == "blocked_terms"


def _blocked_task(exapp: ExAppRunner, ionos: FakeIonos, **settings: str) -> tuple[dict[str, object], str]:
    nextcloud = _start(exapp, ionos)
    _save_token(nextcloud, ionos.token)
    nextcloud.save_setting("blocked_terms", "forbidden thing; re:secret\\s+plan")
    for field_id, value in settings.items():
        nextcloud.save_setting(field_id, value)
    task = nextcloud.wait_for_task(nextcloud.schedule({"input": "The SECRET   plan of the moon"}), timeout=30)
    return task, nextcloud.admin_task(int(str(task["id"])))["errorMessage"]


def test_a_blocked_task_fails_with_the_admins_message_before_anything_is_sent(
    exapp: ExAppRunner, ionos: FakeIonos, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO)
    task, admin_message = _blocked_task(exapp, ionos, blocked_message="Not here, please.")
    assert task["status"] == FAILED
    assert task["userFacingErrorMessage"] == "Not here, please."
    assert ionos.stats().requests == 0
    policy_lines = [record.getMessage() for record in caplog.records if record.name == "text2image_hub.policy"]
    assert policy_lines == ["a prompt was refused by the prompt policy (blocked term 2)"]
    assert "moon" not in caplog.text
    assert "moon" not in admin_message
    assert all("moon" not in entry["message"] for entry in exapp.nextcloud.logs)
    allowed = exapp.nextcloud.wait_for_task(exapp.nextcloud.schedule({"input": "a secret garden"}), timeout=30)
    assert allowed["status"] == SUCCESS


def test_the_default_message_for_a_blocked_prompt_is_in_the_users_language(exapp: ExAppRunner, ionos: FakeIonos):
    exapp.nextcloud.set_language("alice", "nl")
    task, _ = _blocked_task(exapp, ionos)
    assert task["userFacingErrorMessage"] == Catalog().render(DEFAULT_BLOCKED_MESSAGE, "nl")
    assert task["userFacingErrorMessage"] != str(DEFAULT_BLOCKED_MESSAGE)


def test_a_blocked_prompt_on_the_api_is_a_400_prompt_rejected(tmp_path: Path):
    settings = standalone_settings(tmp_path, T2I_BLOCKED_TERMS="forbidden thing")
    with serve(settings) as api, api.client() as client:
        refused = client.post("/v1/images/generations", json={"prompt": "A Forbidden  Thing, please", "seed": 1})
        allowed = client.post("/v1/images/generations", json={"prompt": "a permitted thing", "seed": 1})
        refused_job = client.post("/v1/images/jobs", json={"prompt": "one FORBIDDEN thing"})
    assert refused_job.status_code == 400
    assert refused_job.json()["error"]["code"] == "PROMPT_REJECTED"
    assert refused.status_code == 400
    assert refused.json() == {
        "error": {
            "message": str(DEFAULT_BLOCKED_MESSAGE),
            "type": "invalid_request_error",
            "param": "prompt",
            "code": "PROMPT_REJECTED",
        }
    }
    assert allowed.status_code == 200
    assert [call.prompt for call in api.local.calls] == ["a permitted thing"]
