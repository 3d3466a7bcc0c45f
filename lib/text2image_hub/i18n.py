"""Messages in the user's language, the way Nextcloud's Python ExApps translate: gettext catalogues.

A user-facing text is written ``_("The size {size} is not supported.", size=…)``: ``_`` is the marker Nextcloud's
``translationtool`` extracts (``_('…')``), and it returns a ``Message`` — the English template and its values —
rendered only when the reader's language is known: ``str(message)`` is English (logs, nextcloud.log, /v1), and
``catalog.render(message, "de")`` is German (a task's ``userFacingErrorMessage``, the provider's texts in the
Assistant). Values are inserted after translation, so a translation moves them where its grammar wants them.

The catalogues are ``translationfiles/<lang>/text2image_hub.po`` (what translators edit), compiled by
``scripts/translations.py`` (``make translations``) to ``locale/<lang>/LC_MESSAGES/text2image_hub.mo`` inside the
package (what gettext reads); a language without a catalogue, or a message without a translation, falls back to
English.
"""

from __future__ import annotations

import contextlib
import functools
import gettext
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DOMAIN = "text2image_hub"
LOCALE_DIR = Path(__file__).resolve().parent / "locale"
DEFAULT_LANGUAGE = "en"
LANGUAGE_NAMES = {
    "en": "English",
    "de": "Deutsch (Du)",
    "de_DE": "Deutsch (Sie)",
    "es": "Español",
    "fr": "Français",
    "it": "Italiano",
    "nl": "Nederlands",
}
"""The languages shipped, by their own names. As in Nextcloud, ``de`` is informal German, ``de_DE`` formal."""
LANGUAGES = tuple(code for code in LANGUAGE_NAMES if code != DEFAULT_LANGUAGE)
"""The translations (English is the source)."""


@dataclass(frozen=True)
class Message:
    """A user-facing text: an English template (the gettext message id) and the values for its ``{fields}``."""

    template: str
    values: Mapping[str, object] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.format(self.template)

    def format(self, template: str) -> str:
        """``template`` (this message's English, or its translation) with the values filled in."""
        return template.format(**self.values) if self.values else template


def _(template: str, /, **values: object) -> Message:
    """Mark ``template`` for translation (and extraction); the values fill its ``{fields}`` once translated."""
    return Message(template, values)


def language_code(tag: str | None) -> str:
    """A Nextcloud language or the first Accept-Language tag, normalised: ``de-DE;q=0.9`` is ``de_DE``, ``FR`` is
    ``fr``; anything else is English."""
    first = (tag or "").split(",")[0].split(";")[0].strip().replace("-", "_")
    match = re.fullmatch(r"([A-Za-z]{2,3})(?:_([A-Za-z]{2}))?(?:_.*)?", first)
    if match is None:
        return DEFAULT_LANGUAGE
    language, region = match.group(1).lower(), match.group(2)
    return f"{language}_{region.upper()}" if region else language


def catalogue_path(locale_dir: Path, language: str) -> Path:
    """Where gettext's compiled catalogue of ``language`` lies (``scripts/translations.py`` writes it)."""
    return locale_dir / language / "LC_MESSAGES" / f"{DOMAIN}.mo"


class Catalog:
    """The translations, loaded once per language (``gettext`` falls back to English for anything missing)."""

    def __init__(self, locale_dir: Path = LOCALE_DIR) -> None:
        self._locale_dir = locale_dir

    @functools.cache  # noqa: B019  # one Catalog per app; a handful of languages
    def _translations(self, language: str) -> gettext.NullTranslations:
        """``de_DE`` (Nextcloud's formal German) is looked up, then ``de``; ``pt_BR`` then ``pt``; then English. The
        files are opened by path: ``gettext.translation`` would also try ``locale.normalize``'s guesses (``de`` →
        ``de_DE``), turning informal German formal."""
        for candidate in dict.fromkeys([language, language.split("_")[0]]):
            path = catalogue_path(self._locale_dir, candidate)
            with contextlib.suppress(FileNotFoundError), path.open("rb") as catalogue:
                return gettext.GNUTranslations(catalogue)
        return gettext.NullTranslations()

    def render(self, message: Message | str, language: str | None) -> str:
        """``message`` in ``language`` (a Nextcloud language code or Accept-Language tag), English as fallback."""
        if isinstance(message, str):
            return message
        code = language_code(language)
        if code == DEFAULT_LANGUAGE:
            return str(message)
        try:
            return message.format(self._translations(code).gettext(message.template))
        except (KeyError, IndexError, ValueError):  # a translation that lost a {field}: English rather than nothing
            return str(message)


class Languages:
    """The translations and the installation's language.

    The installation's language (the provider's texts in the Assistant, the messages of a user whose language
    Nextcloud does not tell) is the admin's ``language`` setting, else the one Nextcloud sent (``Accept-Language``)
    when the app was last enabled, remembered in ``<storage>/language`` across restarts, else English.
    """

    def __init__(self, storage: Path | None, catalog: Catalog | None = None) -> None:
        self._file = storage / "language" if storage is not None else None
        self._catalog = catalog or Catalog()
        self._remembered: str | None = None

    def remember(self, accept_language: str | None) -> None:
        """Keep the language Nextcloud sent with /enabled."""
        code = language_code(accept_language)
        if accept_language is None or code == self._remembered:
            return
        self._remembered = code
        if self._file is not None:
            with contextlib.suppress(OSError):  # not worth failing /enabled for: the setting still applies
                self._file.parent.mkdir(parents=True, exist_ok=True)
                self._file.write_text(code, encoding="utf-8")

    def installation(self, configured: str = "") -> str:
        if configured:
            return language_code(configured)
        if self._remembered is None:
            self._remembered = DEFAULT_LANGUAGE  # the file is read once: /enabled keeps it current
            if self._file is not None:
                with contextlib.suppress(OSError):
                    self._remembered = language_code(self._file.read_text(encoding="utf-8"))
        return self._remembered

    def render(self, message: Message | str, language: str | None) -> str:
        return self._catalog.render(message, language)
