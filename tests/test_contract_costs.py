"""The per-call costs read from the recorded exchanges, and their regexes against the paths the fake serves."""

from __future__ import annotations

import re

from tests.contract_costs import EXAPP, fake_costs, recorded_costs


def test_the_worker_calls_cost_tens_of_milliseconds_on_the_recorded_server() -> None:
    costs = recorded_costs()
    assert set(costs) == {"claim", "progress", "upload", "result", "config", "schedule"}
    assert (costs["claim"].seconds, costs["claim"].samples) == (0.045, 29)  # 200 and 204 answers, 8 scenarios
    assert costs["upload"].seconds == 0.059
    assert all(0.02 < costs[name].seconds < 0.1 for name in ("claim", "progress", "upload", "result", "config"))
    assert costs["schedule"].endpoint.direction != EXAPP  # a user's call, answered after AppAPI's /trigger


def test_fake_costs_match_the_worker_calls_and_nothing_else() -> None:
    patterns = [re.compile(path) for path in fake_costs(recorded_costs())]
    tp = "/ocs/v2.php/taskprocessing/tasks_provider"
    called = [f"{tp}/next", f"{tp}/12/progress", f"{tp}/12/file", f"{tp}/12/result"]
    called.append("/ocs/v1.php/apps/app_api/api/v1/ex-app/config/get-values")
    assert [sum(bool(p.search(path)) for p in patterns) for path in called] == [1] * 5
    others = [f"{tp}/next_batch", "/ocs/v2.php/taskprocessing/schedule", "/ocs/v1.php/apps/app_api/api/v1/log"]
    assert not any(p.search(path) for p in patterns for path in others)
