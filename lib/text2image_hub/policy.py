"""The admin's prompt policy: blocked terms, checked before anything is generated or sent to a remote service.

The admin writes terms separated by new lines or ``;``. A term matches as a whole word (or words), whatever the
case: ``gore`` blocks "Gore" but not "gorens". A term starting ``re:`` is a regular expression (case-insensitive;
write ``\\x3b`` for a ``;`` inside one). A refused prompt is a 400 ``PROMPT_REJECTED`` with the admin's message, and
an info line in the log that names the rule, never the prompt.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass

from .errors import InvalidRequestError
from .i18n import Message, _

logger = logging.getLogger(__name__)

REGEX_PREFIX = "re:"
DEFAULT_BLOCKED_MESSAGE = _("This request is not allowed on this server.")
_SEPARATORS = re.compile(r"[;\n]")


class PromptRejectedError(InvalidRequestError):
    """A prompt the admin's policy does not allow: the user reads the admin's message, nothing more."""

    def __init__(self, message: str | Message) -> None:
        super().__init__(message, code="PROMPT_REJECTED", param="prompt")


@functools.lru_cache(maxsize=16)  # the config (and so its policy) is read per task and per request
def compile_terms(text: str) -> tuple[re.Pattern[str], ...]:
    """The admin's terms as patterns; an invalid regular expression is a ``ValueError`` naming it."""
    patterns = []
    for raw in _SEPARATORS.split(text):
        term = raw.strip()
        if not term:
            continue
        if term.lower().startswith(REGEX_PREFIX):
            source = term[len(REGEX_PREFIX) :].strip()
            try:
                patterns.append(re.compile(source, re.IGNORECASE))
            except re.error as exc:
                raise ValueError(f"the regular expression {source!r} is invalid ({exc})") from None
        else:
            words = r"\s+".join(re.escape(word) for word in term.split())
            patterns.append(re.compile(rf"(?<!\w){words}(?!\w)", re.IGNORECASE))
    return tuple(patterns)


@dataclass(frozen=True)
class PromptPolicy:
    blocked: tuple[re.Pattern[str], ...]
    message: str | Message = DEFAULT_BLOCKED_MESSAGE

    @classmethod
    def from_settings(cls, blocked_terms: str, blocked_message: str) -> PromptPolicy:
        return cls(compile_terms(blocked_terms), blocked_message.strip() or DEFAULT_BLOCKED_MESSAGE)

    def check(self, prompt: str) -> None:
        """Refuse ``prompt`` when a blocked term matches it."""
        for number, pattern in enumerate(self.blocked, start=1):
            if pattern.search(prompt):
                logger.info("a prompt was refused by the prompt policy (blocked term %d)", number)
                raise PromptRejectedError(self.message)
