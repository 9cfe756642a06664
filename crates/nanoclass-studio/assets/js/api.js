// Requests to the studio's JSON API (under /api). No page state here.

// A JSON request: the parsed answer (null for 204 or an empty body). A body that is FormData,
// or any body with contentType "raw", is sent as it is; any other body as JSON. An error
// answer throws an Error with the server's message and the HTTP status in `status`.
export async function api(method, url, body, contentType) {
  const opt = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) {
    if (contentType === "raw") { opt.body = body; }
    else if (body instanceof FormData) { opt.body = body; }
    else { opt.body = JSON.stringify(body); opt.headers["Content-Type"] = "application/json"; }
  }
  const r = await fetch(url, opt);
  if (r.status === 204) return null;
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (!r.ok) {
    const e = new Error((data && data.error) || `${r.status} ${r.statusText}`);
    e.status = r.status;
    throw e;
  }
  return data;
}

// Posts a JPEG frame as the raw body; the fetch Response (the caller reads status and JSON).
export function postJpeg(url, blob) {
  return fetch(url, { method: "POST", body: blob, headers: { "Content-Type": "image/jpeg" }, credentials: "same-origin" });
}

// Posts a JPEG frame as the raw body; the answer's JSON, or an Error with the server's message.
export async function postJpegJson(url, blob) {
  const r = await postJpeg(url, blob);
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(data.error || r.statusText);
  return data;
}
