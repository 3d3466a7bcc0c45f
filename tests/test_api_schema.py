"""Property-based run over the app's own OpenAPI schema (schemathesis + hypothesis): no request gets a 500.

Every operation is exercised with schema-valid cases (which must also get answers that match the schema: status
codes, content types, bodies) and with schema-violating cases (which must be refused with a 4xx, never a 500).
The app runs standalone on 127.0.0.1 with the instant backend at tiny sizes; nothing leaves the machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import CheckFunction, not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.instant_backend import InstantBackend, StaticBackends
from tests.servers import ServerThread
from text2image_hub.admin import FIELD_IDS
from text2image_hub.app import create_app
from text2image_hub.imaging import ImageSize
from text2image_hub.settings import Settings, load_settings

KEY = "schema-key"
TINY = (ImageSize(32, 32), ImageSize(64, 64), ImageSize(512, 512))
EXAMPLES = 60


def _settings(storage: Path) -> Settings:
    environ = {"APP_PERSISTENT_STORAGE": str(storage), "T2I_API_KEYS": KEY, "T2I_BACKEND": "local"}
    return load_settings(environ, FIELD_IDS)


SCHEMA = schemathesis.openapi.from_dict(create_app(_settings(Path("unused"))).openapi())
OPERATIONS = {result.ok().label: result.ok() for result in SCHEMA.get_all_operations() if isinstance(result, Ok)}
LABELS = sorted(OPERATIONS)
CASES = [(label, GenerationMode.POSITIVE) for label in LABELS] + [
    (label, GenerationMode.NEGATIVE)  # only a body can be made invalid (every string is a valid path id)
    for label, operation in sorted(OPERATIONS.items())
    if operation.definition.raw.get("requestBody")
]


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    backends = StaticBackends(local_backend=InstantBackend(sizes=TINY))

    async def factory(_: Settings) -> StaticBackends:
        return backends

    with ServerThread(
        create_app(_settings(tmp_path_factory.mktemp("schema")), backends=factory), lifespan="on"
    ) as server:
        yield server.url


def test_schema_has_the_api_operations() -> None:
    assert "POST /v1/images/generations" in LABELS
    assert "GET /v1/models" in LABELS
    assert "GET /v1/images/{image_id}" in LABELS
    assert {"POST /v1/images/jobs", "GET /v1/images/jobs/{job_id}", "DELETE /v1/images/jobs/{job_id}"} <= set(LABELS)
    assert "GET /v1/images/jobs/{job_id}/events" in LABELS


@pytest.mark.parametrize(("label", "mode"), CASES, ids=[f"{label}-{mode.value}" for label, mode in CASES])
def test_no_server_errors(server_url: str, label: str, mode: GenerationMode) -> None:
    operation = OPERATIONS[label]
    checks: list[CheckFunction] = [not_a_server_error]
    if mode is GenerationMode.POSITIVE:
        checks += [status_code_conformance, content_type_conformance, response_schema_conformance]

    with httpx2.Client(timeout=30) as client:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def run(case: Any) -> None:
            kwargs = case.as_transport_kwargs(base_url=server_url)
            response = send(client, kwargs)
            case.validate_response(response, checks=checks, transport_kwargs=kwargs)

        run()


def send(client: httpx2.Client, kwargs: dict[str, Any]) -> httpx2.Response:
    """Send a case's requests-style arguments with httpx2 (schemathesis' own transport needs classic requests)."""
    headers = {key: value for key, value in kwargs["headers"].items() if key.lower() != "authorization"}
    headers["Authorization"] = f"Bearer {KEY}"
    body: dict[str, Any] = {}
    if "json" in kwargs:
        body["json"] = kwargs["json"]
    if kwargs.get("files"):
        files = [
            (name, (filename, _bytes(value))) for name, (filename, value, *_) in kwargs["files"] if value is not None
        ]
        body["files"] = files or [("prompt", (None, b""))]  # an empty form still goes out as multipart
    elif isinstance(kwargs.get("data"), dict):
        body["data"] = {key: str(value) for key, value in kwargs["data"].items() if value is not None}
    elif kwargs.get("data") is not None:
        body["content"] = _bytes(kwargs["data"])
    request = client.build_request(
        kwargs["method"], kwargs["url"], headers=headers, params=kwargs.get("params") or None, **body
    )
    request.read()  # schemathesis reads the sent body back when it reports a failure
    return client.send(request)


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()
