"""Delivering an answer to Feishu/Lark: once as text, or streamed into interactive cards.

Streaming uses interactive cards edited with `PATCH /open-apis/im/v1/messages/{id}`, not text
messages edited with `PUT`: Feishu caps text edits at 20 per message (a minute-long answer at one
update per second would hit it and leave the user with a cut-off reply), while a card takes
updates at 5 QPS per message with no count cap. The first card is sent with the first tokens,
then updated at most once per `interval` seconds (Feishu allows 5 QPS per chat, shared by all
bots); the final update holds the whole answer. Text beyond one card's limit continues in further
cards. Every reply carries a `uuid` of the inbound message id and the part number, so a retried
send of ours never shows twice.

The message ids of the cards are noted on the message's claim as they are sent, so an answer
recovered after a crash updates the cards the dead process had started instead of adding more.
"""

from __future__ import annotations

import logging
import time

from platforms.feishu.api import FeishuAPI, FeishuAPIError, card_content, text_content
from proxy.contracts import Answer, PlatformContext
from proxy.text import split_text
from proxy.texts import BUNDLES, Texts
from proxy.types import Inbound

log = logging.getLogger("switchboard.feishu")
CURSOR = " ▍"


def full_text(answer: Answer, texts: Texts) -> str:
    """What the user should finally see: the text, then one line per generated image URL
    (an inline `data:` image would be megabytes of text: it is only mentioned)."""
    links = [url if url.startswith(("https://", "http://")) else texts["no_image_url"] for url in answer.images]
    return "\n".join(line for line in [answer.text.strip(), *links] if line) or texts["empty"]


async def send_once(api: FeishuAPI, source: str, answer: Answer, limit: int, texts: Texts) -> None:
    async for _ in answer:
        pass
    for i, part in enumerate(split_text(full_text(answer, texts), limit)):
        await api.reply(source, "text", text_content(part), f"{source}-{i}")


class CardStream:
    """One answer streamed into one or more cards replying to the inbound message `source`."""

    def __init__(
        self,
        api: FeishuAPI,
        source: str,
        limit: int,
        interval: float,
        notes: tuple[PlatformContext, Inbound] | None = None,
        texts: Texts = BUNDLES["en"],
    ) -> None:
        self.api, self.source, self.limit, self.interval = api, source, limit, interval
        self.texts = texts
        self.notes = notes  # where to note the cards' ids, for a recovery after a crash
        started = (notes[1].recovered or {}).get("cards") if notes else None
        self.cards: list[str] = [str(c) for c in started] if isinstance(started, list) else []  # our cards, in order
        self.shown: list[str] = [""] * len(self.cards)  # what each card currently shows

    async def run(self, answer: Answer) -> None:
        last = float("-inf")
        async for _ in answer:
            if answer.text.strip() and time.monotonic() - last >= self.interval:
                try:
                    await self._show(answer.text, final=False)
                except FeishuAPIError as e:
                    log.warning("feishu streaming update skipped: %s", e)
                last = time.monotonic()
        await self._show(full_text(answer, self.texts), final=True)

    async def _show(self, text: str, final: bool) -> None:
        parts = split_text(text, self.limit) or [self.texts["empty"]]
        for i, part in enumerate(parts):
            live = part if final or i < len(parts) - 1 else part + CURSOR
            if i >= len(self.cards):
                self.cards.append(await self.api.reply(self.source, "interactive", card_content(live), self._uuid(i)))
                self.shown.append(live)
                if self.notes is not None:
                    await self.notes[0].note(self.notes[1], cards=self.cards)
            elif self.shown[i] != live:
                await self._update(i, live, final)
        if final:  # a backend `replace` can shorten the answer: empty the cards it no longer needs
            for i in range(len(parts), len(self.cards)):
                try:
                    await self._patch(i, "…")
                except FeishuAPIError as e:
                    log.warning("feishu: emptying a surplus card failed: %s", e)

    async def _update(self, i: int, text: str, final: bool) -> None:
        try:
            await self._patch(i, text)
        except FeishuAPIError as e:
            if not final:
                raise
            # The final text must reach the user even when the card cannot be updated.
            log.warning("feishu final card update failed (%s); sending that part as text", e)
            await self.api.reply(self.source, "text", text_content(text), self._uuid(i) + "-final")

    async def _patch(self, i: int, text: str) -> None:
        await self.api.patch_card(self.cards[i], card_content(text))
        self.shown[i] = text

    def _uuid(self, i: int) -> str:
        return f"{self.source}-{i}"
