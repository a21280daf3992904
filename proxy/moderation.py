"""Per-channel moderation of chat-platform messages: block lists and/or a moderation provider.

```yaml
channels:
  - name: public
    match: {platform: wechat}
    providers: [gpt]
    moderation:
      block: ["赌博", "casino"]          # words or phrases, case-insensitive
      block_regex: ['\\b\\d{16}\\b']     # Python regular expressions, case-insensitive
      provider: mod                      # an OpenAI-compatible provider: POST /moderations
```

A blocked message gets the channel's `blocked` text and makes no model call (and stays out of
the transcript). An answer is screened as it streams: once the text so far contains a blocked
word, the upstream is closed and the answer replaced by `blocked_output` (platforms that stream
edit what was shown into that); with a provider, the whole answer is checked once it is complete
and replaced the same way when flagged. The provider is called through the failover core (its
circuit and retries); when it cannot answer, `fail_closed` decides: let through (logged, the
default) or block.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from proxy.types import Delta

log = logging.getLogger("switchboard.moderation")


class ModerationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    block: list[str] = []
    """Words or phrases (case-insensitive) that block a message, or an answer, containing them."""
    block_regex: list[str] = []
    """Regular expressions (Python syntax, case-insensitive) that block what they match."""
    provider: str | None = None
    """A provider that moderates (kind `openai`: `POST /moderations`); what it flags is blocked."""
    input: bool = True
    """Screen users' messages before any model call."""
    output: bool = True
    """Screen answers (as they stream, and once complete with a provider)."""
    fail_closed: bool = False
    """When the moderation provider fails: false lets the text through (logged), true blocks it."""


#: (provider name, text) -> flagged? Raises when the provider could not answer.
Flagger = Callable[[str, str], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class Moderation:
    """A channel's moderation, compiled at config load."""

    pattern: re.Pattern[str] | None
    provider: str | None
    input: bool
    output: bool
    fail_closed: bool

    @classmethod
    def compile(cls, cfg: ModerationConfig) -> Moderation:
        """ValueError (with the index of the bad entry) for a pattern that does not compile."""
        parts = [re.escape(w) for w in cfg.block if w.strip()]
        for i, rx in enumerate(cfg.block_regex):
            try:
                re.compile(rx)
            except re.error as e:
                raise ValueError(f"block_regex[{i}]: not a valid regular expression: {e}") from None
            parts.append(f"(?:{rx})")
        pattern = re.compile("|".join(parts), re.IGNORECASE) if parts else None
        return cls(pattern, cfg.provider, cfg.input, cfg.output, cfg.fail_closed)

    def listed(self, text: str) -> bool:
        return self.pattern is not None and self.pattern.search(text) is not None

    async def flagged(self, text: str, flag: Flagger) -> bool:
        """Does the provider flag `text`? `fail_closed` answers when it cannot say."""
        if self.provider is None or not text.strip():
            return False
        try:
            return await flag(self.provider, text)
        except Exception as e:
            log.warning(
                "moderation provider %s failed (%s): %s",
                self.provider,
                type(e).__name__,
                "blocked" if self.fail_closed else "let through",
            )
            return self.fail_closed

    async def blocks(self, text: str, flag: Flagger) -> bool:
        """Is a user's message blocked?"""
        if not self.input:
            return False
        return self.listed(text) or await self.flagged(text, flag)

    async def screen(self, source: AsyncIterator[Delta], flag: Flagger, withheld: str) -> AsyncIterator[Delta]:
        """`source`, with the answer replaced by `withheld` as soon as it is found blocked."""
        if not self.output:
            async for d in source:
                yield d
            return
        text = ""
        try:
            async for d in source:
                text = d.text if d.replace else text + d.text
                if self.listed(text):
                    log.info("an answer was withheld by the block list")
                    yield Delta(withheld, replace=True, usage=d.usage)
                    return
                yield d
        finally:
            await source.aclose()  # type: ignore[attr-defined]
        if await self.flagged(text, flag):
            log.info("an answer was withheld: the moderation provider flagged it")
            yield Delta(withheld, replace=True)
