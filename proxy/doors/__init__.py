"""Front doors: one module per API dialect a bot may speak, all onto the same core.

- `chat.py`: the flow every chat dialect shares (`ChatDoor`: auth, routing, limits, failover,
  usage, metrics, the log line), and the `StreamEncoder` a dialect implements for its events.
- `openai_chat.py`: OpenAI chat completions (`/v1/chat/completions`, `/v1/models`), the hot path.
- `anthropic.py`: Anthropic Messages (`/v1/messages`, `/v1/messages/count_tokens`).
- `responses.py`: OpenAI Responses (`/v1/responses`, `previous_response_id` kept in the store).
- `embeddings.py`: OpenAI embeddings (`/v1/embeddings`) onto the providers that embed.
- `images.py`: OpenAI image generation (`/v1/images/generations`) onto the providers that draw.
- `dify.py`: the Dify Service API (`/dify/v1/...`), conversations kept by Switchboard.
- `audio.py`: OpenAI transcriptions (`/v1/audio/transcriptions`, multipart) onto the providers that transcribe.

The core never learns a dialect: each door turns its wire format into the core's `ChatRequest`
and the core's deltas back into its wire format.
"""
