"""The task worker end to end: the real app over HTTP, the fake Nextcloud through the real nc_py_api client."""

from __future__ import annotations

import base64
import logging
import re
import time
from dataclasses import replace
from typing import Any

import httpx2
import pytest
from PIL.PngImagePlugin import PngImageFile

from tests.conftest import FAST_TIMING, wait_until
from tests.fake_nextcloud import ocs_v1_body
from tests.instant_backend import InstantBackend, StaticBackends
from tests.pngs import open_png
from text2image_hub.errors import GpuOutOfMemoryError
from text2image_hub.imaging import ImageSize
from text2image_hub.provider import PROVIDER_ID

SUCCESS = "STATUS_SUCCESSFUL"
FAILED = "STATUS_FAILED"


def _images(nextcloud, task: dict[str, Any]) -> list[PngImageFile]:
    return [open_png(nextcloud.file(task["id"], file_id)) for file_id in task["output"]["images"]]


def test_enable_registers_the_provider_and_the_form(registered):
    runner = registered()
    provider = runner.nextcloud.providers[PROVIDER_ID]
    assert provider["task_type"] == "core:text2image"
    names = [shape["name"] for shape in provider["optional_input_shape"]]
    assert names == ["size", "style", "seed"]
    assert provider["optional_input_shape_defaults"]["size"] == "512x512"
    assert "admin_settings" in runner.nextcloud.forms
    assert runner.nextcloud.appconfig["remote_api_key"]["sensitive"] in (1, True)


def test_scheduled_task_is_triggered_and_ends_with_real_pngs(registered):
    nextcloud = registered().nextcloud
    task_id = nextcloud.schedule({"input": "two cats", "numberOfImages": 3, "size": "256x256", "seed": 7})
    task = nextcloud.wait_for_task(task_id, timeout=20)
    assert task["status"] == SUCCESS, task
    images = _images(nextcloud, task)
    assert len(images) == 3
    assert all(image.format == "PNG" and image.size == (256, 256) for image in images)
    assert [image.text["Seed"] for image in images] == ["7", "8", "9"]
    assert all(image.text["AI-Generated"] == "true" and "Prompt" not in image.text for image in images)
    assert nextcloud.triggers
    metrics = httpx2.get(f"{nextcloud.app_url}/metrics").text
    assert 't2i_images_generated_total{backend="local",source="task"} 3.0' in metrics


def test_polling_picks_up_a_task_whose_trigger_was_lost(registered):
    runner = registered(timing=replace(FAST_TIMING, poll_interval=0.5))
    nextcloud = runner.nextcloud
    app_url, nextcloud.app_url = nextcloud.app_url, "http://127.0.0.1:9"  # the trigger fails to connect
    task_id = nextcloud.schedule({"input": "a lighthouse", "numberOfImages": 1})
    nextcloud.app_url = app_url
    assert nextcloud.wait_for_task(task_id, timeout=10)["status"] == SUCCESS


def test_one_trigger_drains_a_queue_of_twenty(registered):
    runner = registered()
    nextcloud = runner.nextcloud
    app_url, nextcloud.app_url = nextcloud.app_url, "http://127.0.0.1:9"
    task_ids = [nextcloud.schedule({"input": f"picture {i}", "numberOfImages": 1}) for i in range(19)]
    nextcloud.app_url = app_url
    task_ids.append(nextcloud.schedule({"input": "the last one", "numberOfImages": 1}))
    statuses = [nextcloud.wait_for_task(task_id, timeout=30)["status"] for task_id in task_ids]
    assert statuses == [SUCCESS] * 20


@pytest.mark.parametrize(
    ("task_input", "message_part"),
    [
        ({"input": "", "numberOfImages": 1}, "prompt is empty"),
        ({"input": "x", "numberOfImages": 0}, "between 1 and 12"),
        ({"input": "x", "numberOfImages": 13}, "between 1 and 12"),
    ],
)
def test_invalid_input_fails_with_a_clear_message(registered, task_input, message_part):
    nextcloud = registered().nextcloud
    task = nextcloud.wait_for_task(nextcloud.schedule(task_input), timeout=10)
    assert task["status"] == FAILED
    assert message_part in task["userFacingErrorMessage"]
    metrics = httpx2.get(f"{nextcloud.app_url}/metrics").text
    assert 't2i_generations_in_progress{source="task"} -' not in metrics, "the gauge never goes negative"


def test_size_the_backend_no_longer_supports_fails_naming_the_sizes(exapp):
    backend = InstantBackend()
    exapp.backends = StaticBackends(local_backend=backend)
    exapp.start()
    nextcloud = exapp.nextcloud
    nextcloud.register_app()
    # the pass that /enabled started finds no task; the worker then idles (no trigger, no poll)
    wait_until(lambda: _empty_claims(nextcloud) >= 1, 5, "the worker's first pass did not end")
    app_url, nextcloud.app_url = nextcloud.app_url, "http://127.0.0.1:9"
    task_id = nextcloud.schedule({"input": "x", "numberOfImages": 1, "size": "1024x768"})
    backend.sizes = (ImageSize(256, 256), ImageSize(512, 512))  # e.g. the admin switched models
    nextcloud.app_url = app_url
    nextcloud.schedule({"input": "wake up", "numberOfImages": 1})
    task = nextcloud.wait_for_task(task_id, timeout=10)
    assert task["status"] == FAILED
    assert "Supported sizes: 256x256, 512x512" in task["userFacingErrorMessage"]
    # re-registration happens on the worker's next pass, maybe after the failure
    wait_until(lambda: _declared_sizes(nextcloud) == ["256x256", "512x512"], 5, "the provider was not re-registered")


def _empty_claims(nextcloud, since: int = 0) -> int:
    """How often the worker asked for a task and got none (``…/tasks_provider/next`` answered 204), counting the
    requests from index ``since`` on."""
    return sum(r.path.endswith("/tasks_provider/next") and r.status == 204 for r in nextcloud.requests[since:])


def _declared_sizes(nextcloud) -> list[str]:
    return [value["value"] for value in nextcloud.providers[PROVIDER_ID]["optional_input_shape_enum_values"]["size"]]


def test_text_seed_is_refused_by_nextcloud_and_a_numeric_string_count_is_coerced(registered):
    nextcloud = registered().nextcloud
    with pytest.raises(Exception, match="Non-numeric"):
        nextcloud.schedule({"input": "x", "numberOfImages": 1, "seed": "abc"})
    task = nextcloud.wait_for_task(nextcloud.schedule({"input": "x", "numberOfImages": "2"}), timeout=10)
    assert task["status"] == SUCCESS
    assert len(task["output"]["images"]) == 2


def test_backend_exception_fails_the_task(exapp):
    exapp.backends = StaticBackends(local_backend=InstantBackend(fail_with=GpuOutOfMemoryError("CUDA OOM")))
    exapp.start()
    exapp.nextcloud.register_app()
    task = exapp.nextcloud.wait_for_task(exapp.nextcloud.schedule({"input": "x", "numberOfImages": 4}), timeout=10)
    assert task["status"] == FAILED
    assert "too large for this server's GPU" in task["userFacingErrorMessage"]
    assert "CUDA OOM" in exapp.nextcloud.admin_task(task["id"])["errorMessage"]


def test_unexpected_exception_fails_the_task_with_a_generic_message(exapp):
    exapp.backends = StaticBackends(local_backend=InstantBackend(fail_with=ZeroDivisionError("boom")))
    exapp.start()
    exapp.nextcloud.register_app()
    task = exapp.nextcloud.wait_for_task(exapp.nextcloud.schedule({"input": "x", "numberOfImages": 1}), timeout=10)
    assert task["status"] == FAILED
    assert "internal error" in task["userFacingErrorMessage"]
    assert "ZeroDivisionError" in exapp.nextcloud.admin_task(task["id"])["errorMessage"]
    # ERROR records reach nextcloud.log through the forwarder's queue
    wait_until(lambda: any("unexpected error" in entry["message"] for entry in exapp.nextcloud.logs), 5)


def test_nextcloud_going_away_mid_task_and_coming_back(exapp, caplog):
    backend = InstantBackend(steps=10, step_seconds=0.1)
    exapp.backends = StaticBackends(local_backend=backend)
    exapp.start()
    nextcloud = exapp.nextcloud
    nextcloud.register_app()
    task_id = nextcloud.schedule({"input": "x", "numberOfImages": 2})
    wait_until(lambda: backend.steps_run >= 3)
    with caplog.at_level(logging.WARNING, logger="text2image_hub.worker"):
        nextcloud.set_failure("refuse")
        wait_until(lambda: backend.steps_run == 10, 20)  # the generation ends while Nextcloud is down
        # uploads must wait: a refused connection leaves no trace in the fake, but each failed try is logged
        wait_until(lambda: _failed_uploads(caplog, task_id) >= 2, 10, "the worker did not retry the upload")
    assert nextcloud.task(task_id)["status"] == "STATUS_RUNNING"
    nextcloud.set_failure(None)
    task = nextcloud.wait_for_task(task_id, timeout=20)
    assert task["status"] == SUCCESS
    assert len(task["output"]["images"]) == 2


def _failed_uploads(caplog: pytest.LogCaptureFixture, task_id: int) -> int:
    return sum(
        r.levelno == logging.WARNING and f"task {task_id}" in r.getMessage() and "upload" in r.getMessage()
        for r in list(caplog.records)  # a copy: the app's thread appends to it
    )


@pytest.mark.parametrize("mode", ["maintenance", "timeout"])
def test_worker_backs_off_and_recovers_from_a_failing_nextcloud(registered, mode):
    nextcloud = registered().nextcloud
    nextcloud.set_failure(mode, hold_seconds=0.5)
    # scheduled as the outage begins: the trigger reaches the app, the worker's claim does not reach Nextcloud
    task_id = nextcloud.schedule({"input": "during the outage", "numberOfImages": 1})
    wait_until(lambda: _failed_app_requests(nextcloud) >= 2, 10, "the worker did not try again after a failure")
    nextcloud.set_failure(None)
    assert nextcloud.wait_for_task(task_id, timeout=20)["status"] == SUCCESS  # the back-off's next try claims it


def _failed_app_requests(nextcloud) -> int:
    """Requests from the app that the failure mode answered (503 in maintenance, 504 after a timeout)."""
    return sum(r.source == "app" and r.status in (503, 504) for r in nextcloud.requests)


def test_cancelled_task_stops_and_gets_no_progress_after_its_end(exapp):
    backend = InstantBackend(steps=100, step_seconds=0.05)
    exapp.backends = StaticBackends(local_backend=backend)
    exapp.start()
    nextcloud = exapp.nextcloud
    nextcloud.register_app()
    task_id = nextcloud.schedule({"input": "slow", "numberOfImages": 1})
    wait_until(lambda: backend.steps_run >= 5)
    nextcloud.cancel(task_id)
    # the worker learns of the cancel from its next progress report, stops the generation and ends the task's job
    wait_until(lambda: _tasks_in_progress(nextcloud) == 0, 10, "the worker kept working on the cancelled task")
    steps = backend.steps_run
    assert steps < 100, "the generation ran to its end after the cancel"
    progress_reports = _progress_reports(nextcloud, task_id)
    task = nextcloud.task(task_id)
    assert task["status"] == "STATUS_CANCELLED"
    assert task["output"] is None
    next_id = nextcloud.schedule({"input": "next", "numberOfImages": 1})
    backend.step_seconds = 0.0
    assert nextcloud.wait_for_task(next_id, timeout=20)["status"] == SUCCESS
    # while the next task ran its 100 steps, nothing more ran or was reported for the cancelled one
    assert backend.steps_run == steps + 100
    assert _progress_reports(nextcloud, task_id) == progress_reports


def _tasks_in_progress(nextcloud) -> float:
    metrics = httpx2.get(f"{nextcloud.app_url}/metrics").text
    found = re.search(r"^t2i_tasks_in_progress (\S+)$", metrics, re.MULTILINE)
    assert found is not None, metrics
    return float(found.group(1))


def _progress_reports(nextcloud, task_id: int) -> int:
    return sum(r.path.endswith(f"/tasks_provider/{task_id}/progress") for r in nextcloud.requests)


def test_no_progress_is_sent_after_the_result(exapp):
    exapp.backends = StaticBackends(local_backend=InstantBackend(steps=20, step_seconds=0.02))
    exapp.start(timing=replace(FAST_TIMING, poll_interval=0.2))
    nextcloud = exapp.nextcloud
    nextcloud.register_app()
    task_id = nextcloud.schedule({"input": "x", "numberOfImages": 1})
    assert nextcloud.wait_for_task(task_id, timeout=10)["status"] == SUCCESS
    # A progress reporter left running would report again within progress_keepalive (0.5 s). Wait until the
    # worker has polled 4 times since the result (at once, then every 0.2 s): 0.6 s on the app's own clock, which a
    # fixed sleep in the test's thread does not guarantee on a loaded machine.
    since = len(nextcloud.requests)
    wait_until(lambda: _empty_claims(nextcloud, since) >= 4, 10, "the worker stopped polling")
    paths = [request.path for request in nextcloud.requests if f"/tasks_provider/{task_id}/" in request.path]
    assert paths[-1].endswith("/result")
    assert any(path.endswith("/progress") for path in paths)
    assert nextcloud.task(task_id)["status"] == SUCCESS


def test_restart_reads_the_enabled_state_back(exapp):
    exapp.start()
    nextcloud = exapp.nextcloud
    nextcloud.register_app()
    exapp.stop()
    calls_before = len(nextcloud.app_calls)
    exapp.start()  # AppAPI sends nothing after a restart
    task_id = nextcloud.schedule({"input": "after restart", "numberOfImages": 1})
    assert nextcloud.wait_for_task(task_id, timeout=10)["status"] == SUCCESS
    assert not [
        call for call in nextcloud.app_calls[calls_before:] if call.target.split("?")[0] in ("/enabled", "/init")
    ]


def test_disable_unregisters_and_stops_claiming(registered):
    nextcloud = registered().nextcloud
    nextcloud.disable_app()
    assert PROVIDER_ID not in nextcloud.providers
    assert "admin_settings" not in nextcloud.forms


def test_requests_without_valid_appapi_headers_get_401(registered, app_secret):
    runner = registered()
    url = runner.server.url
    good = runner.nextcloud.app_headers()
    bad = {**good, "AUTHORIZATION-APP-API": base64.b64encode(b":wrong").decode()}
    with httpx2.Client() as client:
        assert client.get(f"{url}/heartbeat").json() == {"status": "ok"}
        for path, method in (("/trigger?providerId=x", "POST"), ("/enabled?enabled=1", "PUT"), ("/init", "POST")):
            assert client.request(method, url + path).status_code == 401
            response = client.request(method, url + path, headers=bad)
            assert response.status_code == 401
            assert app_secret not in response.text
        assert client.post(f"{url}/trigger?providerId=x", headers=good).status_code == 200


def test_shutdown_keeps_the_task_in_hand_and_the_next_start_finishes_it(exapp):
    backend = InstantBackend(steps=1000, step_seconds=0.05)
    exapp.backends = StaticBackends(local_backend=backend)
    exapp.start()
    nextcloud = exapp.nextcloud
    nextcloud.register_app()
    task_id = nextcloud.schedule({"input": "endless", "numberOfImages": 1})
    wait_until(lambda: backend.steps_run >= 2)
    started = time.monotonic()
    exapp.stop()
    assert time.monotonic() - started < 5, "the shutdown must fit docker stop's 10 s"
    assert nextcloud.task(task_id)["status"] == "STATUS_RUNNING", "not failed: it is done again at the next start"
    assert list((exapp.storage / "journal").glob("*.json")) == [exapp.storage / "journal" / f"{task_id}.json"]

    backend.steps = 2
    exapp.start()  # AppAPI does not call /enabled after a restart
    task = nextcloud.wait_for_task(task_id, timeout=10)
    assert task["status"] == SUCCESS
    wait_until(lambda: not list((exapp.storage / "journal").glob("*.json")), 5, "the entry outlived its task")


def test_disabling_fails_the_task_in_hand(exapp):
    backend = InstantBackend(steps=1000, step_seconds=0.05)
    exapp.backends = StaticBackends(local_backend=backend)
    exapp.start()
    nextcloud = exapp.nextcloud
    nextcloud.register_app()
    task_id = nextcloud.schedule({"input": "endless", "numberOfImages": 1})
    wait_until(lambda: backend.steps_run >= 2)
    nextcloud.disable_app()
    task = nextcloud.task(task_id)
    assert task["status"] == FAILED
    assert "switched off by the administrator" in task["userFacingErrorMessage"]
    assert list((exapp.storage / "journal").glob("*.json")) == []


def test_init_reports_progress_then_100(registered):
    nextcloud = registered().nextcloud
    statuses = [request.json["progress"] for request in nextcloud.requests if request.path.endswith("/ex-app/status")]
    assert statuses == [10, 50, 90, 100]


@pytest.mark.parametrize("include_watermark", [True, False])
def test_visible_mark_follows_the_task_include_watermark(registered, include_watermark):
    nextcloud = registered().nextcloud
    task_id = nextcloud.schedule({"input": "plain", "numberOfImages": 1}, include_watermark=include_watermark)
    image = _images(nextcloud, nextcloud.wait_for_task(task_id, timeout=10))[0].convert("RGB")
    centre = image.getpixel((image.width // 2, image.height // 2))
    corner = [
        image.getpixel((x, y))
        for x in range(image.width - 60, image.width)
        for y in range(image.height - 20, image.height)
    ]
    assert any(pixel != centre for pixel in corner) is include_watermark
    assert _images(nextcloud, nextcloud.task(task_id))[0].text["AI-Generated"] == "true"


def test_enabling_survives_a_registration_that_collided(exapp):
    exapp.start()
    nextcloud = exapp.nextcloud
    collided = ocs_v1_body([], statuscode=996, message="Entity which should be updated has no id")
    nextcloud.answer_next("POST", r"/ai_provider/task_processing$", 200, collided)
    nextcloud.register_app()  # /enabled retries instead of answering the error to AppAPI
    assert nextcloud.enabled
    assert PROVIDER_ID in nextcloud.providers
    task = nextcloud.wait_for_task(nextcloud.schedule({"input": "x", "numberOfImages": 1}), timeout=10)
    assert task["status"] == SUCCESS


def test_progress_call_that_raises_does_not_leave_the_task_running(exapp, caplog):
    backend = InstantBackend(steps=20, step_seconds=0.02)
    exapp.backends = StaticBackends(local_backend=backend)
    exapp.start()
    nextcloud = exapp.nextcloud
    nextcloud.register_app()
    malformed = {"ocs": {"meta": {"status": "ok", "statuscode": 200, "message": "OK"}, "data": ["not a task"]}}
    nextcloud.answer_next("POST", r"/tasks_provider/\d+/progress$", 200, malformed)
    with caplog.at_level(logging.ERROR, logger="text2image_hub"):
        task = nextcloud.wait_for_task(nextcloud.schedule({"input": "x", "numberOfImages": 1}), timeout=10)
    assert task["status"] == SUCCESS
    assert any("progress reporting failed" in record.getMessage() for record in caplog.records)


def test_a_progress_call_in_flight_does_not_hold_up_the_upload_but_ends_before_the_result(exapp):
    exapp.backends = StaticBackends(local_backend=InstantBackend(steps=4, step_seconds=0.05))
    exapp.start()
    nextcloud = exapp.nextcloud
    nextcloud.register_app()
    nextcloud.set_call_costs({r"/tasks_provider/\d+/progress$": 0.4})  # sent at 0.05 s, in flight when images are made
    task_id = nextcloud.schedule({"input": "x", "numberOfImages": 1})
    assert nextcloud.wait_for_task(task_id, timeout=10)["status"] == SUCCESS
    answered = [r.path.rsplit("/", 1)[-1] for r in nextcloud.requests if f"/tasks_provider/{task_id}/" in r.path]
    assert answered == ["file", "progress", "result"]  # in the order Nextcloud answered them
