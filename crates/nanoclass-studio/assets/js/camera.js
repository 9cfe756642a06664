// The camera: this browser's camera or the device camera (the server's source), the frame on
// show, and where its picture is on the page.

import { api } from "./api.js";
import { $, S, show } from "./state.js";

export function cameraMessage(text) {
  const m = $("camera-msg");
  m.textContent = text || "";
  m.hidden = !text;
}

export async function useSource(kind) {
  S.source = kind;
  $("source-" + kind).checked = true;
  cameraMessage("");
  if (kind === "browser") {
    $("device-img").hidden = true;
    $("device-img").removeAttribute("src");
    await startBrowserCamera();
  } else {
    stopBrowserCamera();
    startDevicePreview();
  }
  updateCaptureButton();
}

function stopBrowserCamera() {
  if (S.stream) { for (const t of S.stream.getTracks()) t.stop(); S.stream = null; }
  $("video").hidden = true;
}

async function startBrowserCamera() {
  if (!window.isSecureContext || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    cameraMessage("This browser blocks the camera here: pages served over plain http from another machine are not a secure context. " +
      "Open the studio as http://localhost:PORT on the machine itself, or over https — or use the device camera, file upload or folder import, which work here.");
    return;
  }
  try {
    S.stream = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 640 }, height: { ideal: 480 } }, audio: false });
    const v = $("video");
    v.srcObject = S.stream; v.hidden = false;
    await v.play().catch(() => {});
    countFrames(v, S.stream);
  } catch (e) {
    if (e && e.name === "NotAllowedError") {
      cameraMessage("Camera permission was denied. Allow the camera for this site in the browser's settings and reload — or use the device camera, file upload or folder import.");
    } else if (e && (e.name === "NotFoundError" || e.name === "OverconstrainedError")) {
      cameraMessage("No camera was found on this computer. Use the device camera, file upload or folder import.");
    } else {
      cameraMessage("The camera could not start: " + (e && e.message ? e.message : e));
    }
  }
  updateCaptureButton();
}

function startDevicePreview() {
  const img = $("device-img");
  if (!S.deviceSource || !S.deviceSource.uri) {
    img.hidden = true;
    cameraMessage("No device camera is set. Enter a source (v4l2:///dev/video0, a folder or a video file) and press Use.");
    return;
  }
  if (S.deviceSource.error) cameraMessage("Device camera: " + S.deviceSource.error);
  img.hidden = false;
  // S.deviceShown: the source generation whose first frame is on show (read by the tests).
  const gen = S.deviceSource.generation;
  img.onload = () => { S.deviceShown = gen; };
  img.src = `/api/source/stream?g=${gen}&t=${Date.now()}`;
}

export async function refreshSource() {
  const st = await api("GET", "/api/source");
  S.deviceSource = st;
  $("source-desc").textContent = st.uri ? (st.description || st.uri) + (st.error ? " — " + st.error : "") : "no device camera";
  if (st.uri && !$("source-uri").value) $("source-uri").value = st.uri;
  return st;
}

export async function setDeviceSource() {
  const uri = $("source-uri").value.trim();
  if (!uri) return;
  try {
    S.deviceSource = await api("PUT", "/api/source", { uri });
    await refreshSource();
    show("device camera: " + (S.deviceSource.description || uri));
    await useSource("device");
  } catch (e) { cameraMessage(e.message); }
}

export function cameraReady() {
  if (S.source === "device") return !!(S.deviceSource && S.deviceSource.uri);
  const v = $("video");
  return !!(S.stream && v.videoWidth > 0);
}

export function updateCaptureButton() {
  updatePointHint();
  const ready = !!(S.task && (S.source === "device" ? S.deviceSource && S.deviceSource.uri : S.stream));
  $("capture").disabled = !(ready && S.category);
  for (const b of document.querySelectorAll("li.category .rec")) b.disabled = !ready;
}

// Regression: how to save a point (click, or the arrow keys and Enter on the focused stage).
export function updatePointHint() {
  const h = $("point-hint");
  const reg = S.kind === "regression";
  h.hidden = !reg;
  const stage = $("stage");
  if (reg) {
    stage.tabIndex = 0;
    stage.setAttribute("role", "application");
    stage.setAttribute("aria-label", "camera frame: place a point");
    stage.setAttribute("aria-describedby", "point-hint");
  } else {
    for (const a of ["tabindex", "role", "aria-label", "aria-describedby"]) stage.removeAttribute(a);
  }
  if (!S.category) {
    h.textContent = "Add a category, then click its point in the frame to save the frame.";
  } else if (S.keyPoint) {
    h.textContent = `Point (${S.keyPoint.x}, ${S.keyPoint.y}) for "${S.category}": arrow keys move it (Shift: 10 px), Enter saves the frame with it.`;
  } else {
    h.textContent = `Click the point of "${S.category}" in the frame: that frame is saved with the point. ` +
      "Keyboard: focus the frame, place the point with the arrow keys, press Enter.";
  }
}

// The browser camera's frames as the <video> presents them (requestVideoFrameCallback):
// S.cam.presented counts them, S.cam.fps is their rate over the last 2 s (the camera's rate,
// shown apart from the model's).
function countFrames(v, stream) {
  S.cam = { presented: 0, times: [], fps: 0 };
  if (!v.requestVideoFrameCallback) return;
  const tick = (now, meta) => {
    if (S.stream !== stream) return; // this camera was stopped
    const c = S.cam;
    c.presented = meta.presentedFrames;
    c.times.push(now);
    while (c.times.length && now - c.times[0] > 2000) c.times.shift();
    if (c.times.length > 1) c.fps = (c.times.length - 1) * 1000 / (now - c.times[0]);
    v.requestVideoFrameCallback(tick);
  };
  v.requestVideoFrameCallback(tick);
}

// Waits until the browser camera has presented a frame after frame number `seen`, and returns
// the number of the frame now on show: live scoring sends each camera frame once. Without
// requestVideoFrameCallback it waits 100 ms instead.
export async function nextFrame(seen) {
  if (!$("video").requestVideoFrameCallback) {
    await new Promise((res) => setTimeout(res, 100));
    return seen + 1;
  }
  const t0 = performance.now();
  while (S.cam.presented <= seen && performance.now() - t0 < 2000) {
    await new Promise((res) => setTimeout(res, 10));
  }
  return S.cam.presented;
}

// The browser camera's current frame as a JPEG.
export function grabBlob() {
  return new Promise((resolve, reject) => {
    const v = $("video");
    if (!v.videoWidth) { reject(new Error("the camera has no picture yet")); return; }
    const c = $("grab");
    c.width = v.videoWidth; c.height = v.videoHeight;
    c.getContext("2d").drawImage(v, 0, 0);
    c.toBlob((b) => (b ? resolve(b) : reject(new Error("could not encode the frame"))), "image/jpeg", 0.9);
  });
}

// The frame on show (the browser camera's <video> or the device camera's <img>) as a JPEG of
// its own pixel size: exactly the picture the user pointed at.
export function grabShown(el) {
  return new Promise((resolve, reject) => {
    const w = el.naturalWidth || el.videoWidth, h = el.naturalHeight || el.videoHeight;
    if (!w || !h) { reject(new Error("the camera has no picture yet")); return; }
    const c = $("grab");
    c.width = w; c.height = h;
    c.getContext("2d").drawImage(el, 0, 0, w, h);
    c.toBlob((b) => (b ? resolve(b) : reject(new Error("could not encode the frame"))), "image/jpeg", 0.92);
  });
}

// The camera element on show (<video> or the device <img>), null when hidden.
export function shownMedia() {
  const el = S.source === "device" ? $("device-img") : $("video");
  return el.hidden ? null : el;
}

// Where the picture of an <img> or <video> is drawn on the page: the content box (borders and
// padding removed) with object-fit and a centred object-position applied. Returns the page
// position (CSS pixels, client coordinates) of image pixel (0, 0) and the scale in CSS pixels
// per image pixel on each axis; null before the picture has a size.
export function pictureRect(el) {
  const nw = el.naturalWidth || el.videoWidth, nh = el.naturalHeight || el.videoHeight;
  if (!nw || !nh) return null;
  const r = el.getBoundingClientRect(), cs = getComputedStyle(el);
  const px = (k) => parseFloat(cs[k]) || 0;
  const left = r.left + px("borderLeftWidth") + px("paddingLeft");
  const top = r.top + px("borderTopWidth") + px("paddingTop");
  const w = r.width - px("borderLeftWidth") - px("borderRightWidth") - px("paddingLeft") - px("paddingRight");
  const h = r.height - px("borderTopWidth") - px("borderBottomWidth") - px("paddingTop") - px("paddingBottom");
  let sx = w / nw, sy = h / nh;
  const fit = cs.objectFit; // <video> is "contain" in the browser's own style sheet
  if (fit === "contain") sx = sy = Math.min(w / nw, h / nh);
  else if (fit === "cover") sx = sy = Math.max(w / nw, h / nh);
  else if (fit === "none") sx = sy = 1;
  else if (fit === "scale-down") sx = sy = Math.min(1, w / nw, h / nh);
  return { left: left + (w - nw * sx) / 2, top: top + (h - nh * sy) / 2, sx, sy, width: nw, height: nh };
}

// A click -> integer pixel of the picture: the nearest whole continuous coordinate (pixel i
// spans [i, i + 1); a click on the corner between pixels i - 1 and i gives i), clamped to
// 0..width-1 and 0..height-1. null for a click on the letterbox bars or before a picture.
export function clickToPixel(el, e) {
  const p = pictureRect(el);
  if (!p) return null;
  const x = (e.clientX - p.left) / p.sx, y = (e.clientY - p.top) / p.sy;
  if (x < 0 || y < 0 || x > p.width || y > p.height) return null;
  return { x: Math.min(p.width - 1, Math.round(x)), y: Math.min(p.height - 1, Math.round(y)), width: p.width, height: p.height };
}

// An arrow key -> the point moved by one pixel (ten with Shift), clamped to the picture;
// null for any other key. `p` is {x, y}; `size` is {width, height}.
export function arrowStep(e, p, size) {
  const d = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] }[e.key];
  if (!d) return null;
  const k = e.shiftKey ? 10 : 1;
  return {
    x: Math.max(0, Math.min(size.width - 1, p.x + d[0] * k)),
    y: Math.max(0, Math.min(size.height - 1, p.y + d[1] * k)),
  };
}
