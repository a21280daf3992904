"""Small Starlette helpers shared by the front doors."""

from __future__ import annotations

from starlette.requests import Request

from proxy.errors import RequestError


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing (413) anything over `limit` bytes without reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise RequestError("Content-Length is not a number.") from None
        if size > limit:
            raise RequestError(
                f"The request body is too large ({size} bytes; the limit is {limit}).",
                status=413,
                code="request_too_large",
            )
        return await request.body()
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(
                f"The request body is too large (over {limit} bytes).", status=413, code="request_too_large"
            )
        chunks.append(chunk)
    return b"".join(chunks)
