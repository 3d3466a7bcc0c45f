"""Admin settings end to end: the form saved the way Nextcloud saves it, read per task, applied without restart."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from PIL.PngImagePlugin import PngImageFile

from tests.conftest import FAST_TIMING, wait_until
from tests.fake_nextcloud import FakeNextcloud
from tests.instant_backend import InstantBackend, StaticBackends
from tests.pngs import open_png
from text2image_hub.provider import PROVIDER_ID

SUCCESS = "STATUS_SUCCESSFUL"
FAILED = "STATUS_FAILED"


def _first_png(nextcloud, task: dict[str, Any]) -> PngImageFile:
    return open_png(nextcloud.file(task["id"], task["output"]["images"][0]))


def _run(nextcloud: FakeNextcloud, task_input: dict[str, Any]) -> dict[str, Any]:
    return nextcloud.wait_for_task(nextcloud.schedule(task_input), timeout=15)


def test_form_registered_on_enable_has_the_fields_with_their_types(registered):
    form = registered().nextcloud.forms["admin_settings"]
    assert (form["section_type"], form["section_id"]) == ("admin", "ai")
    types = {field["id"]: field["type"] for field in form["fields"]}
    assert types["backend"] == "select"
    assert types["remote_preset"] == "select"
    assert types["remote_base_url"] == "url"
    assert types["remote_api_key"] == "password"
    assert types["remote_model"] == "text"
    assert types["local_model"] == "select"
    assert types["default_size"] == "select"
    assert types["default_steps"] == "number"
    assert types["prompt_length_policy"] == "select"
    assert types["watermark"] == "checkbox"
    assert types["api_keys"] == "password"
    sensitive = {field["id"] for field in form["fields"] if field.get("sensitive")}
    assert sensitive == {"remote_api_key", "api_keys"}


def test_saved_values_apply_to_the_next_task_without_restart(registered):
    nextcloud = registered(timing=replace(FAST_TIMING, poll_interval=0.2)).nextcloud
    before = _first_png(nextcloud, _run(nextcloud, {"input": "a fox", "numberOfImages": 1}))
    assert before.size == (512, 512)
    assert "Prompt" not in before.text
    nextcloud.save_setting("default_size", "1024x768")
    nextcloud.save_setting("include_prompt_in_metadata", "1")
    nextcloud.save_setting("watermark", "0")
    # Nextcloud fills in the declared default size when the task is scheduled: wait until it is re-declared
    wait_until(
        lambda: nextcloud.providers[PROVIDER_ID]["optional_input_shape_defaults"]["size"] == "1024x768",
        5,
        "the provider was not re-registered with the new default size",
    )
    task = _run(nextcloud, {"input": "a fox", "numberOfImages": 1})
    after = _first_png(nextcloud, task)
    assert after.size == (1024, 768)
    assert after.text["Prompt"] == "a fox"


def test_sensitive_token_saved_by_the_admin_reads_back_as_plaintext(registered):
    runner = registered()
    nextcloud = runner.nextcloud
    nextcloud.save_setting("remote_api_key", "dummy-ionos-token-0002")
    row = nextcloud.appconfig["remote_api_key"]
    assert row["sensitive"] == 1
    assert row["value"] == "dummy-ionos-token-0002"
    assert row["stored"] != "dummy-ionos-token-0002", "AppAPI stores it encrypted"


def test_invalid_setting_fails_tasks_with_user_and_admin_messages(registered):
    nextcloud = registered().nextcloud
    nextcloud.save_setting("default_steps", "-4")
    task = _run(nextcloud, {"input": "x", "numberOfImages": 1})
    assert task["status"] == FAILED
    assert "ask your administrator" in task["userFacingErrorMessage"]
    assert "default_steps" in nextcloud.admin_task(task["id"])["errorMessage"]
    assert any("default_steps" in entry["message"] and entry["level"] == 3 for entry in nextcloud.logs)
    nextcloud.save_setting("default_steps", "0")
    assert _run(nextcloud, {"input": "x", "numberOfImages": 1})["status"] == SUCCESS


def test_switching_backend_re_registers_the_provider(exapp):
    remote = InstantBackend(backend_name="remote", model_id="vendor/remote-model")
    exapp.backends = StaticBackends(remote_backend=remote)
    exapp.start()
    nextcloud = exapp.nextcloud
    nextcloud.register_app()
    assert "instant" in nextcloud.providers[PROVIDER_ID]["name"]
    nextcloud.save_setting("backend", "remote")
    task = _run(nextcloud, {"input": "x", "numberOfImages": 1})
    assert task["status"] == SUCCESS
    assert _first_png(nextcloud, task).text["Backend"] == "remote"
    # a pass that read the config before the save may have claimed the task: the next pass re-registers
    wait_until(lambda: "remote-model" in nextcloud.providers[PROVIDER_ID]["name"], message="not re-registered")
    assert "remote service" in nextcloud.providers[PROVIDER_ID]["name"]


def test_environment_default_applies_until_the_admin_saves(exapp):
    exapp.start(T2I_INCLUDE_PROMPT_IN_METADATA="1")
    nextcloud = exapp.nextcloud
    nextcloud.register_app()
    assert _first_png(nextcloud, _run(nextcloud, {"input": "env", "numberOfImages": 1})).text["Prompt"] == "env"
    nextcloud.save_setting("include_prompt_in_metadata", "0")
    assert "Prompt" not in _first_png(nextcloud, _run(nextcloud, {"input": "saved", "numberOfImages": 1})).text
