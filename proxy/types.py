"""The internal model: small frozen values that cross the core/adapter boundary.

Platform JSON/XML and upstream wire formats never leave their adapters; everything the core
sees is one of these.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message. `content` is a string, or OpenAI content parts for multimodal input.

    `extra` carries OpenAI fields we pass through untouched (`name`, `tool_calls`,
    `tool_call_id`).
    """

    role: str
    content: str | list[JSON] | None
    extra: JSON | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        if not self.content:
            return ""
        return "".join(p.get("text", "") for p in self.content if p.get("type") == "text")

    def to_openai(self) -> JSON:
        out: JSON = {"role": self.role, "content": self.content}
        if self.extra:
            out.update(self.extra)
        return out


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """What a provider is asked to answer.

    `messages` is the full prompt: the channel's system prompt, the stored history when the core
    keeps it, and the new user turn last. `params` are OpenAI generation parameters
    (temperature, max_tokens, tools, ...) after channel overrides. `model` is the channel's
    model override, or None for the provider's configured model. `user` is a stable end-user
    id; `conversation` is the store key of this conversation (channel + session).
    """

    messages: tuple[Message, ...]
    params: Mapping[str, Any] = field(default_factory=dict)
    model: str | None = None
    user: str = "anonymous"
    channel: str = ""
    conversation: str = ""
    stream: bool = True


@dataclass(frozen=True, slots=True)
class Delta:
    """One piece of an answer as it streams.

    `replace=True` means `text` replaces everything streamed so far (Dify's message_replace,
    output moderation). `images` are URLs of generated images.
    """

    text: str = ""
    tool_calls: list[JSON] | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    replace: bool = False
    images: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Completion:
    """A whole (non-streamed) answer."""

    text: str
    finish_reason: str = "stop"
    usage: Usage | None = None
    tool_calls: list[JSON] | None = None
    model: str | None = None
    images: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class EmbedRequest:
    """Texts (or token arrays) to embed. `model` is the channel's model override, else the
    provider's embedding model; `dimensions` is passed on when the caller gave it."""

    inputs: tuple[str, ...] | tuple[tuple[int, ...], ...]
    model: str | None = None
    dimensions: int | None = None
    user: str = "anonymous"


@dataclass(frozen=True, slots=True)
class Embeddings:
    """One vector per input, in input order."""

    vectors: tuple[tuple[float, ...], ...]
    model: str | None = None
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class ImageRequest:
    """Images to generate. `n`/`size`/`response_format` None: the provider's defaults; `params`
    are further images-API fields (quality, style, background ...) passed on."""

    prompt: str
    n: int | None = None
    size: str | None = None
    response_format: str | None = None
    model: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    user: str = "anonymous"


@dataclass(frozen=True, slots=True)
class TranscribeRequest:
    """Audio to transcribe: the uploaded file and the other form fields (language, prompt,
    response_format, temperature ...), passed on as strings."""

    audio: bytes
    filename: str
    content_type: str
    model: str | None = None
    fields: Mapping[str, str] = field(default_factory=dict)


# ---- the web boundary: framework-neutral requests, so protocol code is testable without a server


@dataclass(frozen=True, slots=True)
class WebRequest:
    """An inbound HTTP request as a platform adapter sees it. Header names are lower-case."""

    method: str
    path: str
    headers: Mapping[str, str]
    query: Mapping[str, str]
    body: bytes
    remote: str | None = None


@dataclass(frozen=True, slots=True)
class WebResponse:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: Mapping[str, str] = field(default_factory=dict)


# ---- chat-platform messages


@dataclass(frozen=True, slots=True)
class Inbound:
    """A user message from a chat platform, parsed by its adapter.

    `event_id` is the platform's delivery id (the dedupe key); `extra_keys` are further keys
    that identify the same user message (Slack's channel+ts when it arrives as both `message`
    and `app_mention`). `kind` is `text`, or what the user sent instead (`image`, `voice`,
    `file`, `video`, `location`, `link`, `sticker`, `event`...). `reply_to` is opaque to the
    core: whatever the adapter needs later to deliver the answer (JSON, or converted by the
    adapter's `dump_reply_to`/`load_reply_to`, since it is stored on the message's claim).
    `recovered` holds the delivery notes (`PlatformContext.note`) an earlier attempt at this
    message recorded before it was cut off (a crash, a kill), e.g. the placeholder to edit; None
    when no earlier attempt noted anything. `channel` names the channel that answers when the
    adapter chose it itself (a WeChat menu's configured channel): routing is skipped.
    """

    platform: str
    event_id: str
    chat_id: str
    user_id: str
    text: str
    kind: str = "text"
    direct: bool = True
    thread_id: str | None = None
    user_name: str | None = None
    reply_to: Any = None
    extra_keys: tuple[str, ...] = ()
    recovered: JSON | None = None
    channel: str | None = None


#: Told of every finished request or chat message (for /metrics): door (`openai` or the platform's
#: name), channel (None before one was chosen), outcome, seconds, seconds to the first byte of a
#: streamed answer (None otherwise), and whether a provider other than the chain's first answered.
RequestObserver = Callable[[str, str | None, str, float, float | None, bool], None]
