"""Translations: the catalogues are complete and current, and users read their messages in their language."""

from __future__ import annotations

import gettext
import re
from pathlib import Path
from typing import Any

import pytest

from scripts import translations
from tests.conftest import ExAppRunner, wait_until
from tests.fake_nextcloud import FakeNextcloud
from text2image_hub.i18n import DOMAIN, LANGUAGES, LOCALE_DIR, Catalog, Languages, _, language_code
from text2image_hub.provider import PROVIDER_ID

FAILED = "STATUS_FAILED"
PLACEHOLDER = re.compile(r"\{[^{}]*\}")
TOO_MANY = _("The number of images must be between 1 and {most}.", most=12)


def _placeholders(text: str) -> list[str]:
    return sorted(PLACEHOLDER.findall(text))


def test_the_tooling_and_the_app_ship_the_same_languages():
    assert translations.LANGUAGES == LANGUAGES
    assert translations.DOMAIN == DOMAIN


def test_the_template_holds_every_message_of_the_code():
    template = translations.read_po(translations.TRANSLATIONS / "templates" / f"{DOMAIN}.pot")
    assert set(template) - {""} == set(translations.extract()), "run `make translations`"


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_message_is_translated_with_its_placeholders(language: str):
    catalogue = translations.read_po(translations.po_path(language))
    for msgid in translations.extract():
        assert msgid in catalogue, f"{language}: {msgid!r} is missing: run `make translations`"
        translated = catalogue[msgid].msgstr
        assert translated, f"{language}: {msgid!r} has no translation"
        assert _placeholders(translated) == _placeholders(msgid), f"{language}: {msgid!r} → {translated!r}"


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_compiled_catalogue_matches_its_source(language: str):
    with translations.mo_path(language).open("rb") as compiled:
        shipped = gettext.GNUTranslations(compiled)
    source = translations.compiled(translations.read_po(translations.po_path(language)))
    assert shipped._catalog == source, "run `make translations`"  # type: ignore[attr-defined]
    assert shipped.info()["language"] == language


def test_the_mo_writer_is_read_by_gettext(tmp_path: Path):
    folder = tmp_path / "xx" / "LC_MESSAGES"
    folder.mkdir(parents=True)
    header = "Content-Type: text/plain; charset=UTF-8\n"
    (folder / f"{DOMAIN}.mo").write_bytes(translations.mo_bytes({"": header, "Ä {a}": "Ü {a}", "b": "c"}))
    translation = gettext.translation(DOMAIN, tmp_path, languages=["xx"])
    assert (translation.gettext("Ä {a}"), translation.gettext("b"), translation.gettext("zz")) == ("Ü {a}", "c", "zz")


def test_extraction_refuses_a_message_that_is_not_a_literal(tmp_path: Path):
    package = tmp_path / "lib" / "pkg"
    package.mkdir(parents=True)
    (package / "m.py").write_text("x = 'a'\n_(x)\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="string literal"):
        translations.extract(package)


@pytest.mark.parametrize(
    ("tag", "code"),
    [("de", "de"), ("de_DE", "de_DE"), ("de-DE,de;q=0.9,en;q=0.8", "de_DE"), ("FR", "fr"), ("", "en"), (None, "en")],
)
def test_language_codes_are_normalised(tag: str | None, code: str):
    assert language_code(tag) == code


def test_rendering_falls_back_to_english():
    catalog = Catalog()
    german = catalog.render(TOO_MANY, "de")
    assert "12" in german
    assert german != str(TOO_MANY)
    empty_prompt = _("Please describe the image you want: the prompt is empty.")
    assert catalog.render(empty_prompt, "de_DE") != catalog.render(empty_prompt, "de")  # "Sie", not "du"
    assert catalog.render(TOO_MANY, "de_AT") == german  # a region without a catalogue: its language's
    for unknown in ("xx", "pt_BR", "en_GB", "*", ""):
        assert catalog.render(TOO_MANY, unknown) == "The number of images must be between 1 and 12."
    assert catalog.render("Plain text is shown as it is.", "de") == "Plain text is shown as it is."


def test_a_translation_that_lost_a_placeholder_shows_english(tmp_path: Path):
    folder = tmp_path / "de" / "LC_MESSAGES"
    folder.mkdir(parents=True)
    broken = {"": "Content-Type: text/plain; charset=UTF-8\n", TOO_MANY.template: "Zwischen 1 und {wie_viele}."}
    (folder / f"{DOMAIN}.mo").write_bytes(translations.mo_bytes(broken))
    assert Catalog(tmp_path).render(TOO_MANY, "de") == str(TOO_MANY)


def test_the_installation_language_is_remembered_across_restarts(tmp_path: Path):
    Languages(tmp_path).remember("fr-FR,fr;q=0.9")
    after_restart = Languages(tmp_path)
    assert after_restart.installation() == "fr_FR"
    assert after_restart.installation("de") == "de"  # the admin's choice wins
    assert Languages(tmp_path / "elsewhere").installation() == "en"
    assert LOCALE_DIR.is_dir()


# --- end to end: the real app, the fake Nextcloud, users with languages ---------------------------------------------


def _provider_registrations(nextcloud: FakeNextcloud) -> list[dict[str, Any]]:
    return [
        request.json["provider"]
        for request in nextcloud.app_requests
        if request.method == "POST" and request.path.endswith("/ai_provider/task_processing")
    ]


def _failed_message(runner: ExAppRunner, language: str | None) -> str:
    nextcloud = runner.nextcloud
    if language is not None:
        nextcloud.set_language("alice", language)
    task = nextcloud.wait_for_task(nextcloud.schedule({"input": "a fox", "numberOfImages": 50}))
    assert task["status"] == FAILED
    admin_message = nextcloud.admin_task(task["id"])["errorMessage"]
    assert "between 1 and 12" in admin_message  # nextcloud.log stays English
    return str(task["userFacingErrorMessage"])


def test_a_german_users_failed_task_is_explained_in_german(registered):
    runner = registered()
    message = _failed_message(runner, "de")
    assert message == Catalog().render(TOO_MANY, "de")
    assert message != str(TOO_MANY)
    assert "12" in message


def test_a_user_with_an_unknown_language_reads_english(registered):
    assert _failed_message(registered(), "xx") == str(TOO_MANY)


def test_a_user_with_no_language_of_their_own_reads_the_installation_language(registered):
    runner = registered(T2I_LANGUAGE="it")
    runner.nextcloud.set_language("alice", "")
    assert _failed_message(runner, None) == Catalog().render(TOO_MANY, "it")


def test_the_provider_speaks_the_language_nextcloud_was_enabled_in_even_after_a_restart(exapp: ExAppRunner):
    nextcloud = exapp.nextcloud
    nextcloud.accept_language = "fr"
    exapp.start()
    nextcloud.register_app()
    french = nextcloud.providers[PROVIDER_ID]
    english_styles = ["None", "Photograph"]
    french_styles = [value["name"] for value in french["optional_input_shape_enum_values"]["style"][:2]]
    assert french_styles == [Catalog().render(_(name), "fr") for name in english_styles] != english_styles
    exapp.stop()
    registrations = _provider_registrations(nextcloud)
    exapp.start()  # a restart registers again (AppAPI sends no /enabled then): still in French
    wait_until(lambda: len(_provider_registrations(nextcloud)) > len(registrations))
    assert _provider_registrations(nextcloud)[-1]["name"] == french["name"]


def test_the_admin_chooses_the_language_of_the_provider(registered):
    runner = registered()
    nextcloud = runner.nextcloud
    english = nextcloud.providers[PROVIDER_ID]["name"]
    nextcloud.save_setting("language", "de_DE")
    nextcloud.schedule({"input": "a fox"})  # the worker's next pass reads the setting
    wait_until(lambda: nextcloud.providers[PROVIDER_ID]["name"] != english, message="the provider stayed English")
    size_help = nextcloud.providers[PROVIDER_ID]["optional_input_shape"][0]["description"]
    assert size_help == Catalog().render(_("Image size (width × height)"), "de_DE")
