"""The gettext catalogues, laid out as Nextcloud's Python ExApps lay them out.

    translationfiles/templates/text2image_hub.pot    every message of the code (``extract`` writes it)
    translationfiles/<lang>/text2image_hub.po        a language's translations (translators edit these)
    lib/text2image_hub/locale/<lang>/LC_MESSAGES/text2image_hub.mo   what the app reads (``compile`` writes it)

``extract`` finds every ``_("…")`` in ``lib/text2image_hub`` (its first argument must be a string literal), writes the
template and brings each language's catalogue up to date: new messages get an empty translation, messages the code
no longer has are dropped. ``compile`` turns each catalogue into its ``.mo`` (no GNU gettext needed).
``make translations`` runs both; ``tests/test_translations.py`` fails when a catalogue is incomplete or stale.

    python scripts/translations.py extract|compile
"""

from __future__ import annotations

import ast
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

from text2image_hub.i18n import DOMAIN, LANGUAGES, LOCALE_DIR, catalogue_path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "lib" / "text2image_hub"
TRANSLATIONS = ROOT / "translationfiles"
MARKER = "_"


@dataclass
class Entry:
    msgid: str
    msgstr: str = ""
    references: list[str] = field(default_factory=list)


def extract(package: Path = PACKAGE) -> dict[str, Entry]:
    """Every message marked ``_("…")`` in the package's code, in order of appearance."""
    found: dict[str, Entry] = {}
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == MARKER):
                continue
            where = f"{path.relative_to(package.parent.parent)}:{node.lineno}"
            if not node.args or not isinstance(node.args[0], ast.Constant) or not isinstance(node.args[0].value, str):
                raise SystemExit(f"{where}: _() needs a string literal as its first argument (it is extracted)")
            msgid = node.args[0].value
            found.setdefault(msgid, Entry(msgid)).references.append(where)
    return found


def _quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


def _unquote(text: str) -> str:
    body = text.strip()
    if len(body) < 2 or body[0] != '"' or body[-1] != '"':
        raise ValueError(f"not a quoted PO string: {text!r}")
    out, chars = [], iter(body[1:-1])
    for char in chars:
        if char == "\\":
            escape = next(chars, "")
            out.append({"n": "\n", "t": "\t", '"': '"', "\\": "\\"}.get(escape, escape))
        else:
            out.append(char)
    return "".join(out)


def read_po(path: Path) -> dict[str, Entry]:
    """The entries of a PO file (the header, msgid "", included), in file order."""
    entries: dict[str, Entry] = {}
    current: Entry | None = None
    key = ""
    references: list[str] = []
    for line in [*path.read_text(encoding="utf-8").splitlines(), ""]:
        stripped = line.strip()
        if stripped.startswith("#:"):
            references.extend(stripped[2:].split())
        elif stripped.startswith("msgid "):
            if current is not None:
                entries[current.msgid] = current
            current, key = Entry(_unquote(stripped[6:]), references=references), "msgid"
            references = []
        elif stripped.startswith("msgstr ") and current is not None:
            current.msgstr, key = _unquote(stripped[7:]), "msgstr"
        elif stripped.startswith('"') and current is not None:
            if key == "msgid":
                current.msgid += _unquote(stripped)
            else:
                current.msgstr += _unquote(stripped)
        elif not stripped and current is not None:
            entries[current.msgid] = current
            current = None
    return entries


def _header(language: str | None) -> str:
    lines = [
        f"Project-Id-Version: {DOMAIN}",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=UTF-8",
        "Content-Transfer-Encoding: 8bit",
    ]
    if language:
        lines.append(f"Language: {language}")
    return "".join(f"{line}\n" for line in lines)


def write_po(path: Path, messages: dict[str, Entry], language: str | None) -> None:
    parts = [f"msgid {_quote('')}\nmsgstr {_quote(_header(language))}\n"]
    for entry in messages.values():
        flags = "#, python-brace-format\n" if "{" in entry.msgid else ""
        references = "".join(f"#: {reference}\n" for reference in entry.references)
        parts.append(f"{references}{flags}msgid {_quote(entry.msgid)}\nmsgstr {_quote(entry.msgstr)}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")


def mo_bytes(catalogue: dict[str, str]) -> bytes:
    """A GNU ``.mo`` file of ``catalogue`` (msgid → msgstr; the header under ""), keys sorted, no hash table."""
    keys = sorted(catalogue, key=lambda key: key.encode())
    ids, strs, table = b"", b"", []
    for key in keys:
        key_bytes, value_bytes = key.encode(), catalogue[key].encode()
        table.append((len(ids), len(key_bytes), len(strs), len(value_bytes)))
        ids += key_bytes + b"\0"
        strs += value_bytes + b"\0"
    ids_start = 7 * 4 + 16 * len(keys)
    strs_start = ids_start + len(ids)
    key_table = b"".join(struct.pack("<II", length, offset + ids_start) for offset, length, _, _ in table)
    value_table = b"".join(struct.pack("<II", length, offset + strs_start) for _, _, offset, length in table)
    header = struct.pack("<7I", 0x950412DE, 0, len(keys), 7 * 4, 7 * 4 + 8 * len(keys), 0, 0)
    return header + key_table + value_table + ids + strs


def compiled(po: dict[str, Entry]) -> dict[str, str]:
    """What a catalogue's ``.mo`` holds: its header and every message translated (untranslated ones fall back)."""
    return {entry.msgid: entry.msgstr for entry in po.values() if entry.msgstr}


def po_path(language: str) -> Path:
    return TRANSLATIONS / language / f"{DOMAIN}.po"


def mo_path(language: str) -> Path:
    return catalogue_path(LOCALE_DIR, language)


def update_catalogues() -> None:
    messages = extract()
    write_po(TRANSLATIONS / "templates" / f"{DOMAIN}.pot", messages, None)
    for language in LANGUAGES:
        old = read_po(po_path(language)) if po_path(language).exists() else {}
        merged = {
            msgid: Entry(msgid, old[msgid].msgstr if msgid in old else "", entry.references)
            for msgid, entry in messages.items()
        }
        write_po(po_path(language), merged, language)
        missing = sum(1 for entry in merged.values() if not entry.msgstr)
        print(f"{language}: {len(merged)} messages, {missing} untranslated")


def compile_catalogues() -> None:
    for language in LANGUAGES:
        path = mo_path(language)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(mo_bytes(compiled(read_po(po_path(language)))))
        print(f"{language}: {path.relative_to(ROOT)}")


if __name__ == "__main__":
    commands = {"extract": update_catalogues, "compile": compile_catalogues}
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        raise SystemExit(f"usage: {sys.argv[0]} {'|'.join(commands)}")
    commands[sys.argv[1]]()
