// Preloaded into Portkey's gateway by bench/run.py (`node --import`), for streaming only.
// On Node 20 with @hono/node-server >= 1.14, the gateway re-wraps an upstream SSE response as
// `new Response(stream, upstreamResponse)`; node-server's light Response keeps the upstream's
// *immutable* fetch Headers, and the gateway's next `headers.append` throws "immutable", so every
// streamed request answers 500. Handing the gateway event-stream responses with ordinary
// (mutable) headers avoids that; JSON answers are passed through untouched.
const upstreamFetch = globalThis.fetch;
const NativeResponse = globalThis.Response;
globalThis.fetch = async (...args) => {
  const res = await upstreamFetch(...args);
  if (!(res.headers.get("content-type") || "").startsWith("text/event-stream")) return res;
  return new NativeResponse(res.body, { status: res.status, statusText: res.statusText, headers: new Headers(res.headers) });
};
