"""Splitting answers by UTF-8 bytes: WeCom limits text messages in bytes (2,048 for an app's text
message, 20,480 for a smart robot's stream), and a Chinese character takes three of them."""

from __future__ import annotations

from proxy.contracts import Answer
from proxy.texts import Texts


def utf8_len(ch: str) -> int:
    code = ord(ch)
    return 1 if code < 0x80 else 2 if code < 0x800 else 3 if code < 0x10000 else 4


def size(text: str) -> int:
    """UTF-8 bytes of `text` (a lone surrogate counts as 3, as `utf8_len` does)."""
    return len(text.encode("utf-8", "surrogatepass"))


def _fitting(text: str, limit: int) -> int:
    """How many leading characters of `text` fit in `limit` bytes."""
    size = 0
    for i, ch in enumerate(text):
        size += utf8_len(ch)
        if size > limit:
            return i
    return len(text)


def prefix(text: str, limit: int) -> str:
    """The longest start of `text` within `limit` UTF-8 bytes (cut anywhere but inside a character)."""
    return text if size(text) <= limit else text[: _fitting(text, limit)]


def split_bytes(text: str, limit: int) -> list[str]:
    """Pieces of at most `limit` UTF-8 bytes, cut at a paragraph, line or word boundary in the
    second half of a piece when there is one (as `proxy.text.split_text` does for characters),
    never inside a character. Joining the pieces gives `text` back but for the whitespace the
    cuts happened on. An empty text gives []."""
    if limit < 4:
        raise ValueError("limit must hold any character (4 bytes)")
    pieces: list[str] = []
    rest = text
    while size(rest) > limit:
        n = _fitting(rest, limit)
        window = rest[: n + 1]
        cut = -1
        for sep in ("\n\n", "\n", " "):
            at = window.rfind(sep)
            if at > n // 2:
                cut = at
                break
        if cut == -1:
            pieces.append(rest[:n])
            rest = rest[n:]
            continue
        pieces.append(rest[:cut])
        rest = rest[cut:].lstrip("\n ")
    if rest.strip():
        pieces.append(rest)
    return pieces


def full_text(answer: Answer, texts: Texts) -> str:
    """What the user should finally see: the text, then a line per generated image URL (an inline
    `data:` image would be megabytes of text: it is only mentioned)."""
    links = [url if url.startswith(("https://", "http://")) else texts["no_image_url"] for url in answer.images]
    return "\n".join(line for line in [answer.text.strip(), *links] if line) or texts["empty"]
