"""Reading an `im.message.receive_v1` message (reference: platforms.md §4.6).

Quirks:
- `message.content` is a JSON *string*; text is `{"text": "@_user_1 hello"}`, rich text ("post")
  is `{"title", "content": [[{"tag": "text"|"a"|"at"|"img"|…}, …], …]}` (sometimes wrapped in a
  locale key such as `zh_cn`);
- @-mentions appear as placeholders `@_user_N` (and `@_all`) explained by `message.mentions`:
  the bot's own mention is removed, other people's become `@Name`;
- in groups the bot is addressed when `mentions[].id.open_id` is its open_id; without a known
  open_id every group message that reached us counts as addressed (Feishu only delivers
  @-mentions unless the app may read all group messages).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

PLACEHOLDER = re.compile(r"@_user_\d+|@_all")
#: Feishu message types → Inbound.kind for what we cannot read as text.
KINDS = {"image": "image", "sticker": "sticker", "file": "file", "audio": "voice", "media": "video"}
IGNORED_TYPES = frozenset({"system"})


def _mention_names(message: dict[str, Any], bot_open_id: str | None) -> dict[str, str]:
    """Placeholder → what it becomes in the text ('' for the bot and @all)."""
    names: dict[str, str] = {}
    for m in _list(message.get("mentions")):
        if not isinstance(m, dict) or not m.get("key"):
            continue
        is_bot = bot_open_id is not None and _obj(m.get("id")).get("open_id") == bot_open_id
        names[str(m["key"])] = "" if is_bot or not m.get("name") else f"@{m['name']}"
    return names


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _resolve(text: str, names: dict[str, str]) -> str:
    out = PLACEHOLDER.sub(lambda m: names.get(m.group(0), ""), text)
    return re.sub(r"[ \t]{2,}", " ", out).strip()


def addressed_to_bot(message: dict[str, Any], bot_open_id: str | None) -> bool:
    if message.get("chat_type") == "p2p" or bot_open_id is None:
        return True
    return any(
        isinstance(m, dict) and _obj(m.get("id")).get("open_id") == bot_open_id for m in _list(message.get("mentions"))
    )


def _at_name(el: dict[str, Any], names: dict[str, str], bot_open_id: str | None) -> str:
    user = str(el.get("user_id", ""))
    if user in names:
        return names[user]
    if user == bot_open_id or not el.get("user_name"):
        return ""
    return f"@{el['user_name']}"


def _post_text(content: dict[str, Any], names: dict[str, str], bot_open_id: str | None) -> tuple[str, bool]:
    """(text of a rich-text post, whether it holds images/media)."""
    if "content" not in content:  # locale-wrapped: {"zh_cn": {"title", "content"}}
        content = next((v for v in content.values() if isinstance(v, dict)), {})
    lines, has_media = [], False
    for row in _list(content.get("content")):
        parts: list[str] = []
        for el in row if isinstance(row, list) else []:
            tag = el.get("tag") if isinstance(el, dict) else None
            if tag in ("text", "a"):
                parts.append(str(el.get("text", "")))
            elif tag == "at":
                parts.append(_at_name(el, names, bot_open_id))
            elif tag in ("img", "media"):
                has_media = True
        lines.append(_resolve("".join(parts), names))
    title = str(content.get("title") or "")
    text = "\n".join(line for line in [title, *lines] if line.strip())
    return text, has_media


def message_text(message: dict[str, Any], bot_open_id: str | None) -> tuple[str, str] | None:
    """(kind, text) of the message; None for types that are not user messages (system)."""
    mtype = str(message.get("message_type") or "")
    if mtype in IGNORED_TYPES:
        return None
    try:
        content = orjson.loads(message.get("content") or "{}")
    except orjson.JSONDecodeError:
        content = {}
    if not isinstance(content, dict):
        content = {}
    names = _mention_names(message, bot_open_id)
    if mtype == "text":
        return "text", _resolve(str(content.get("text", "")), names)
    if mtype == "post":
        text, has_media = _post_text(content, names, bot_open_id)
        if text:
            return "text", text
        return ("image" if has_media else "post"), ""
    return KINDS.get(mtype, mtype or "unknown"), ""
