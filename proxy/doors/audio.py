"""The audio door: POST /v1/audio/transcriptions, OpenAI's API (a multipart upload).

`model` names a channel; its providers that transcribe (`openai` kind: any OpenAI-compatible
`/audio/transcriptions`, e.g. OpenAI's whisper-1 or a local whisper server) are tried in chain
order with retries, circuits and failover, the others skipped. The transcription model is the
channel's `model`, else the provider's `transcription_model`. The upload may be up to
`server.max_upload_bytes` (25 MB, OpenAI's limit); `language`, `prompt`, `response_format`
(json, text, srt, verbose_json, vtt), `temperature` and `timestamp_granularities[]` are passed on,
and the upstream's answer comes back as it was sent (its content type and body).
"""

from __future__ import annotations

from typing import Any

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

from proxy.doors.chat import Trace
from proxy.doors.openai_chat import OpenAICallDoor
from proxy.errors import ChainFailed, RequestError, RequestRejected
from proxy.http_util import read_body
from proxy.limiter import NO_GRANT
from proxy.types import TranscribeRequest

#: Form fields passed on to the provider (besides `file` and `model`).
FIELDS = frozenset(
    {"language", "prompt", "response_format", "temperature", "timestamp_granularities[]", "chunking_strategy"}
)
FORMATS = frozenset({"json", "text", "srt", "verbose_json", "vtt"})
#: Room for the form's other fields and the multipart framing, on top of the file.
FRAMING = 65_536


class AudioDoor(OpenAICallDoor):
    """The ASGI app of `POST /v1/audio/transcriptions`."""

    door = "audio"
    wanted = frozenset({b"authorization", b"content-length", b"content-type", b"x-request-id"})

    async def serve(self, scope: Scope, receive: Receive, send: Send, trace: Trace) -> None:
        view = self.view
        headers, key_name, key = self.identify(scope, trace, view)
        if not (headers.get(b"content-type") or b"").lower().startswith(b"multipart/form-data"):
            raise RequestError("The request must be multipart/form-data with the audio in 'file'.")
        limit = view.settings.raw.server.max_upload_bytes
        body = await read_body(receive, limit + FRAMING, headers.get(b"content-length"), self.body_timeout)
        form = await _form(scope, body)
        try:
            channel = self._channel(key, form.get("model"), view)
            trace.channel = channel.name
            request = await _request(form, channel.config.model, limit)
        finally:
            await form.close()
        limits = view.settings.limits
        grant = await self._admit(limits, key_name, channel, None) if limits.active else NO_GRANT
        try:
            try:
                provider, (kind, answer) = await self.engine.transcribe(channel, request)
            except ValueError as e:  # no provider of the channel transcribes
                raise RequestError(f"{e}.", param="model", code="audio_not_supported") from None
            except (RequestRejected, ChainFailed) as e:
                return await self.call_failed(e, channel, send, trace)
            trace.provider, trace.failover = provider, provider != channel.providers[0]
            head = ((b"content-type", kind.encode("latin-1")), (b"x-switchboard-provider", provider.encode()))
            await trace.reply(send, 200, answer, head)
        finally:
            await grant.release()


async def _form(scope: Scope, body: bytes) -> Any:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        return await Request(scope, replay).form(max_files=1, max_fields=len(FIELDS) + 2)
    except MultiPartException as e:
        raise RequestError(f"The multipart form could not be read: {e.message}") from None


async def _request(form: Any, model: str | None, limit: int) -> TranscribeRequest:
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise RequestError("'file' is required: the audio file to transcribe.", param="file")
    fields: dict[str, str] = {}
    for name, value in form.multi_items():
        if name in ("file", "model"):
            continue
        if name not in FIELDS:
            raise RequestError(f"Unknown parameter: '{name}'.", param=name)
        if not isinstance(value, str):
            raise RequestError(f"'{name}' must be a form field, not a file.", param=name)
        fields[name] = value
    if fields.get("response_format", "json") not in FORMATS:
        raise RequestError(f"'response_format' must be one of {', '.join(sorted(FORMATS))}.", param="response_format")
    audio = await upload.read()
    if not audio:
        raise RequestError("'file' is empty.", param="file")
    if len(audio) > limit:
        raise RequestError(
            f"The audio file is too large ({len(audio)} bytes; the limit is {limit}).",
            status=413,
            param="file",
            code="request_too_large",
        )
    kind = upload.content_type or "application/octet-stream"
    return TranscribeRequest(audio, upload.filename or "audio", kind, model, fields)
