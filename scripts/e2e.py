"""End-to-end check against a real Nextcloud with text2image_hub registered and enabled (see scripts/register.sh).

As a Nextcloud user it: finds ``core:text2image`` among the task types, schedules a task, follows it to the end,
downloads every image and checks it is a PNG; then calls the app's ``/v1/models`` (and, with ``--v1-generate``,
``/v1/images/generations``) through the AppAPI proxy. Exit status 0 when everything passed.

    NC_USER=admin NC_PASSWORD=… python scripts/e2e.py --url http://127.0.0.1:8080 --size 512x512 --out /tmp/e2e

The password is read from the environment only, and never printed.
"""

from __future__ import annotations

import argparse
import base64
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx2

logger = logging.getLogger("e2e")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FINAL_STATES = {"STATUS_SUCCESSFUL", "STATUS_FAILED", "STATUS_CANCELLED", "STATUS_UNKNOWN"}
OCS_HEADERS = {"OCS-APIRequest": "true", "Accept": "application/json"}


class CheckError(Exception):
    """One end-to-end check failed."""


def ocs_data(response: httpx2.Response) -> Any:
    if response.status_code != 200:
        raise CheckError(f"{response.request.method} {response.request.url.path}: HTTP {response.status_code}")
    return response.json()["ocs"]["data"]


def check_task_type(client: httpx2.Client) -> None:
    types = ocs_data(client.get("/ocs/v2.php/taskprocessing/tasktypes", headers=OCS_HEADERS))["types"]
    if "core:text2image" not in types:
        raise CheckError("core:text2image is not offered: is text2image_hub registered and enabled?")
    logger.info(
        "ok   core:text2image is offered (optional inputs: %s)", sorted(types["core:text2image"]["optionalInputShape"])
    )


def run_task(client: httpx2.Client, prompt: str, images: int, size: str, timeout: float) -> tuple[int, list[int]]:
    body = {
        "type": "core:text2image",
        "appId": "text2image_hub_e2e",
        "customId": "e2e",
        "input": {"input": prompt, "numberOfImages": images, "size": size},
    }
    task = ocs_data(client.post("/ocs/v2.php/taskprocessing/schedule", json=body, headers=OCS_HEADERS))["task"]
    task_id = task["id"]
    logger.info("ok   scheduled task %s", task_id)
    started = time.monotonic()
    last_progress = None
    while task["status"] not in FINAL_STATES:
        if time.monotonic() - started > timeout:
            raise CheckError(f"task {task_id} still {task['status']} after {timeout:.0f} s")
        time.sleep(1.0)
        task = ocs_data(client.get(f"/ocs/v2.php/taskprocessing/task/{task_id}", headers=OCS_HEADERS))["task"]
        if task.get("progress") != last_progress:
            last_progress = task.get("progress")
            logger.info("     %s, progress %s", task["status"], last_progress)
    if task["status"] != "STATUS_SUCCESSFUL":
        raise CheckError(f"task {task_id} ended {task['status']}: {task.get('userFacingErrorMessage')!r}")
    file_ids: list[int] = task["output"]["images"]
    if len(file_ids) != images:
        raise CheckError(f"task {task_id} asked for {images} images and got {len(file_ids)}")
    logger.info("ok   task %s succeeded in %.1f s with files %s", task_id, time.monotonic() - started, file_ids)
    return task_id, file_ids


def download_images(client: httpx2.Client, task_id: int, file_ids: list[int], out: Path | None) -> None:
    for file_id in file_ids:
        response = client.get(f"/ocs/v2.php/taskprocessing/tasks/{task_id}/file/{file_id}", headers=OCS_HEADERS)
        if response.status_code != 200 or not response.content.startswith(PNG_SIGNATURE):
            raise CheckError(f"file {file_id}: HTTP {response.status_code}, not a PNG")
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / f"task{task_id}-{file_id}.png").write_bytes(response.content)
        logger.info("ok   file %s is a PNG of %d bytes", file_id, len(response.content))


def check_v1(client: httpx2.Client, app_id: str, size: str, generate: bool) -> None:
    base = f"/index.php/apps/app_api/proxy/{app_id}/v1"
    response = client.get(f"{base}/models")
    if response.status_code != 200 or not isinstance(response.json().get("data"), list):
        raise CheckError(f"GET /v1/models through the proxy: HTTP {response.status_code}")
    logger.info("ok   /v1/models lists %s", [model.get("id") for model in response.json()["data"]])
    if generate:
        body = {"prompt": "a lighthouse at dusk, watercolour", "size": size, "n": 1, "response_format": "b64_json"}
        response = client.post(f"{base}/images/generations", json=body)
        if response.status_code != 200:
            raise CheckError(f"POST /v1/images/generations: HTTP {response.status_code}: {response.text[:300]}")
        image = base64.b64decode(response.json()["data"][0]["b64_json"])
        if not image.startswith(PNG_SIGNATURE):
            raise CheckError("POST /v1/images/generations: the image is not a PNG")
        logger.info("ok   /v1/images/generations returned a PNG of %d bytes", len(image))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="End-to-end check of text2image_hub inside a Nextcloud.")
    parser.add_argument("--url", default=os.environ.get("NEXTCLOUD_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--app-id", default="text2image_hub")
    parser.add_argument("--prompt", default="a red bicycle leaning on a blue wall, photograph")
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--size", default="512x512")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the task (default 600)")
    parser.add_argument("--out", type=Path, help="save the images into this folder")
    parser.add_argument("--v1-generate", action="store_true", help="also generate one image through /v1")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # one line per request otherwise

    user, password = os.environ.get("NC_USER", "admin"), os.environ.get("NC_PASSWORD")
    if not password:
        logger.error("set NC_PASSWORD (and NC_USER, default admin) in the environment")
        return 2
    with httpx2.Client(base_url=args.url, auth=(user, password), timeout=60.0) as client:
        return run_checks(client, args)


def run_checks(client: httpx2.Client, args: argparse.Namespace) -> int:
    try:
        check_task_type(client)
        task_id, file_ids = run_task(client, args.prompt, args.images, args.size, args.timeout)
        download_images(client, task_id, file_ids, args.out)
        check_v1(client, args.app_id, args.size, args.v1_generate)
    except (CheckError, httpx2.HTTPError) as exc:
        logger.error("FAIL %s", exc)
        return 1
    logger.info("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
