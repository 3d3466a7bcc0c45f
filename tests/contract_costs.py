"""What each Nextcloud call the task worker makes costs on a real server, read from ``tests/fixtures/contract/``.

The recordings (a real Nextcloud 34.0.1 with AppAPI 34.0.0) give every exchange a ``duration_ms``: from the request's
start to its answer, as the destination served it (a call made inside another one, like AppAPI's ``/trigger`` inside
a user's schedule, is counted in the outer one too). ``recorded_costs`` takes the median over the successful (2xx)
exchanges of each endpoint, across all the scenarios: failures (503 in maintenance, 412 with a wrong secret) are
answered early and would make the server look faster than it is. ``fake_costs`` turns them into
``FakeNextcloud.set_call_costs``'s argument.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

FIXTURES: Final = Path(__file__).parent / "fixtures" / "contract"
EXAPP: Final = "ExApp -> Nextcloud"
USER: Final = "user (client) -> Nextcloud"
_TP: Final = r"/ocs/v2\.php/taskprocessing"


@dataclass(frozen=True)
class Endpoint:
    name: str
    direction: str
    method: str
    path: str
    """A regex matched against the whole recorded path; searched in the fake's request paths (``fake_costs``)."""


ENDPOINTS: Final = (
    Endpoint("claim", EXAPP, "GET", _TP + r"/tasks_provider/next$"),
    Endpoint("progress", EXAPP, "POST", _TP + r"/tasks_provider/\d+/progress$"),
    Endpoint("upload", EXAPP, "POST", _TP + r"/tasks_provider/\d+/file$"),
    Endpoint("result", EXAPP, "POST", _TP + r"/tasks_provider/\d+/result$"),
    Endpoint("config", EXAPP, "POST", r"/ocs/v1\.php/apps/app_api/api/v1/ex-app/config/get-values$"),
    Endpoint("schedule", USER, "POST", _TP + r"/schedule$"),
)
"""The calls a queued task costs: the worker's (claim, progress, upload, result, the config read before each task and
pass) and the user's schedule, which a real server answers only after it has called ``/trigger``."""


@dataclass(frozen=True)
class CallCost:
    endpoint: Endpoint
    seconds: float  # the median
    samples: int
    scenarios: tuple[str, ...]  # the recordings' numbers ("03", …)


def exchanges(folder: Path = FIXTURES) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every recorded exchange, with the number of the scenario it comes from."""
    for path in sorted(folder.glob("scenario-*.json")):
        scenario = path.name.split("-")[1]
        data = json.loads(path.read_text())
        steps: Iterable[dict[str, Any]] = data.get("steps", [])
        yield from ((scenario, exchange) for exchange in data.get("exchanges_before_first_step", []))
        for step in steps:
            yield from ((scenario, exchange) for exchange in step.get("exchanges", []))


def recorded_costs(folder: Path = FIXTURES, endpoints: Iterable[Endpoint] = ENDPOINTS) -> dict[str, CallCost]:
    """The median duration of each endpoint's successful exchanges; an endpoint never recorded is left out."""
    found: dict[str, list[tuple[float, str]]] = {}
    wanted = [(endpoint, re.compile(endpoint.path)) for endpoint in endpoints]
    for scenario, exchange in exchanges(folder):
        request, response = exchange.get("request") or {}, exchange.get("response") or {}
        duration = exchange.get("duration_ms")
        if duration is None or not str(response.get("status", "")).startswith("2"):
            continue
        for endpoint, pattern in wanted:
            if (
                exchange.get("direction") == endpoint.direction
                and request.get("method") == endpoint.method
                and pattern.fullmatch(str(request.get("path", "")))
            ):
                found.setdefault(endpoint.name, []).append((float(duration) / 1000.0, scenario))
    return {
        endpoint.name: CallCost(
            endpoint,
            statistics.median(seconds for seconds, _ in found[endpoint.name]),
            len(found[endpoint.name]),
            tuple(sorted({scenario for _, scenario in found[endpoint.name]})),
        )
        for endpoint, _ in wanted
        if endpoint.name in found
    }


def fake_costs(costs: Mapping[str, CallCost], direction: str = EXAPP) -> dict[str, float]:
    """``FakeNextcloud.set_call_costs``'s argument for the calls of one direction (the ExApp's, by default)."""
    return {cost.endpoint.path: cost.seconds for cost in costs.values() if cost.endpoint.direction == direction}
