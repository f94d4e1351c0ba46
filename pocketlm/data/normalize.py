"""Text normalisation: Unicode NFC, one newline convention, no control characters, tidy whitespace."""

from __future__ import annotations

import re
import unicodedata

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b\ufeff]")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u3000]+")
_MANY_NEWLINES = re.compile(r"\n{3,}")


def normalize_text(text: str) -> str:
    """NFC-normalise; CRLF/CR -> LF; drop ANSI escapes and control chars; collapse runs of
    spaces; strip each line; at most one blank line in a row; strip the ends."""
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _ANSI.sub("", text)
    text = _CONTROL.sub("", text)
    text = _SPACES.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    text = _MANY_NEWLINES.sub("\n\n", text)
    return text.strip()
