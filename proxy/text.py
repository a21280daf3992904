"""Text helpers shared by platform adapters."""

from __future__ import annotations


def split_text(text: str, limit: int) -> list[str]:
    """Split `text` into pieces of at most `limit` characters, preferring paragraph, line, then
    word boundaries; never loses or reorders a character (joining the pieces gives `text` back,
    except for the whitespace the split happened on). An empty text gives []."""
    if limit < 1:
        raise ValueError("limit must be positive")
    pieces: list[str] = []
    rest = text
    while len(rest) > limit:
        window = rest[: limit + 1]
        cut = -1
        for sep in ("\n\n", "\n", " "):
            at = window.rfind(sep)
            if at > limit // 2:
                cut = at
                break
        if cut == -1:
            pieces.append(rest[:limit])
            rest = rest[limit:]
            continue
        pieces.append(rest[:cut])
        rest = rest[cut:].lstrip("\n ") if rest[cut] in "\n " else rest[cut:]
    if rest.strip():
        pieces.append(rest)
    return pieces


def strip_prefix(text: str, prefixes: list[str]) -> str | None:
    """If `text` starts with one of `prefixes` (case-insensitive, after leading spaces), return
    the text after it, stripped; else None."""
    t = text.lstrip()
    low = t.lower()
    for p in prefixes:
        if low.startswith(p.lower()):
            return t[len(p) :].strip()
    return None
