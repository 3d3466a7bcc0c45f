"""Deploy-time settings come from the mapping they are given, nothing else; a bad value is one clear line."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from text2image_hub.__main__ import ProbeFilter, main
from text2image_hub.settings import SettingsError, load_settings


def test_settings_ignore_the_process_environment_and_dotenv_files(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NEXTCLOUD_URL", "http://nc.example")  # as `make e2e` needs it exported
    monkeypatch.setenv("APP_PORT", "4242")
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("APP_SECRET=from-a-stray-dotenv\nT2I_BACKEND=remote\n", encoding="utf-8")

    settings = load_settings({}, ("backend",))

    assert settings.standalone
    assert settings.app_port == 9033
    assert settings.app_secret is None
    assert dict(settings.config_defaults) == {}


def test_settings_read_exactly_the_mapping_given() -> None:
    settings = load_settings({"NEXTCLOUD_URL": "http://nc", "app_port": "9100", "T2I_BACKEND": "remote"}, ("backend",))
    assert (settings.nextcloud_url, settings.app_port) == ("http://nc", 9100)
    assert settings.config_defaults == {"backend": "remote"}


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"T2I_LOG_LEVEL": "LOUD"}, "T2I_LOG_LEVEL"),
        ({"T2I_LOCAL_SPEEDUPS": "compile,warp"}, "T2I_LOCAL_SPEEDUPS"),
        ({"APP_PORT": "many"}, "APP_PORT"),
    ],
)
def test_a_bad_setting_stops_the_start_with_one_line_naming_it(environ: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(environ)
    assert named in str(caught.value)
    with pytest.raises(SystemExit) as stopped:
        main(environ)
    message = str(stopped.value.code)
    assert named in message
    assert "\n" not in message


def test_log_level_is_case_insensitive() -> None:
    assert load_settings({"T2I_LOG_LEVEL": "debug"}).log_level == "DEBUG"


@pytest.mark.parametrize(
    ("path", "kept"),
    [("/heartbeat", False), ("/healthz", False), ("/readyz", False), ("/metrics", False), ("/v1/models", True)],
)
def test_probe_requests_leave_no_access_log_line(path: str, kept: bool) -> None:
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("1.2.3.4:5", "GET", path, "1.1", 200),
        None,
    )
    assert ProbeFilter().filter(record) is kept
