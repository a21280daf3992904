"""The operator surface beside the API: `/admin/*`, for admin keys only.

Admin keys (`admin.keys`) are bearer keys of their own: an API key (`keys`) never opens
`/admin/*` and an admin key is not an API key (the config refuses one that is both). Without an
admin key configured every `/admin/*` request is answered 403 with how to configure one; a
missing or wrong key is 401. A key is compared by its SHA-256 digest, in constant time, against
every admin key; keys are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable

import orjson
from starlette.requests import Request
from starlette.responses import Response

from proxy.config import Settings
from proxy.contracts import Store
from proxy.reload import Reloader
from proxy.usage import query

log = logging.getLogger("switchboard.admin")
JSON_TYPE = "application/json"
NOT_CONFIGURED = (
    "No admin key is configured, so /admin/* is closed. Add one to the config, e.g. "
    'admin: {keys: ["${SWITCHBOARD_ADMIN_KEY}"]}, set SWITCHBOARD_ADMIN_KEY and restart; '
    "admin keys are separate from the API keys."
)
BAD_KEY = "Send 'Authorization: Bearer <key>' with one of the configured admin keys (an API key is not one)."


def _error(status: int, message: str, code: str) -> Response:
    body = orjson.dumps({"error": {"message": message, "type": "admin_error", "code": code}})
    headers = {"www-authenticate": "Bearer"} if status == 401 else None
    return Response(body, status, headers=headers, media_type=JSON_TYPE)


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


class Admin:
    def __init__(self, settings: Callable[[], Settings], reloader: Reloader, store: Callable[[], Store]) -> None:
        """`settings` gives the running config (admin keys reload with it)."""
        self.settings, self.reloader, self.store = settings, reloader, store

    def refusal(self, request: Request) -> Response | None:
        """None when the request carries an admin key, else the 403/401 answer."""
        keys = self.settings().raw.admin.keys
        if not keys:
            return _error(403, NOT_CONFIGURED, "admin_not_configured")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = _digest(token.strip()) if scheme.lower() == "bearer" and token.strip() else b""
        found = False
        for key in keys:  # every key is compared: the time does not depend on which one matched
            found |= hmac.compare_digest(_digest(key), given)
        if not found:
            log.warning("admin request refused: %s without a valid admin key", request.url.path)
            return _error(401, BAD_KEY, "invalid_admin_key")
        return None

    async def reload(self, request: Request) -> Response:
        """`POST /admin/reload`: 200 with what changed, or 400 with the config error."""
        refused = self.refusal(request)
        if refused is not None:
            return refused
        result = await self.reloader.reload("admin")
        return Response(orjson.dumps(result.to_json()), 200 if result.ok else 400, media_type=JSON_TYPE)

    async def usage(self, request: Request) -> Response:
        """`GET /admin/usage?by=channel&since=24h`: tokens per group (see `proxy.usage.query`)."""
        refused = self.refusal(request)
        if refused is not None:
            return refused
        by, since = request.query_params.get("by", "channel"), request.query_params.get("since", "24h")
        try:
            body = await query(self.store(), by, since, self.settings().raw.prices)
        except ValueError as e:
            return _error(400, str(e), "invalid_request")
        return Response(orjson.dumps(body), media_type=JSON_TYPE)
