// nanoclass studio page: plain JavaScript, no build step. Talks to the JSON API under /api.
"use strict";

const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;
const S = {
  task: "", category: "", source: "browser", stream: null, deviceSource: null,
  runs: [], live: null, liveTimes: [], job: null, chart: [], totalEpochs: 0,
  // Timings read by people and by the end-to-end test (milliseconds, performance.now()).
  times: { trainClicked: null, firstEpoch: null, done: null },
  fps: 0, lastScores: null, liveCount: 0, captures: 0,
  // Instant preview: the task's status (GET .../instant), whether it was started for this task.
  instant: null, instantStarted: false, userStopped: false,
  // Each refit of the instant model seen by the page: {images, embedded, embed_ms, update_ms, fit_ms}.
  instantUpdates: [],
  // The task's kind ("classification" | "regression"); regression: points saved by clicking
  // the frame ({name, x, y, count} each), the thumbnail editor's image ({name, x, y}).
  kind: "classification", pointsSaved: [], editor: null,
};
window.studio = S;

function show(text, kind) {
  const m = $("msg");
  m.textContent = text || "";
  m.className = "msg" + (kind ? " " + kind : "");
}

async function api(method, url, body, contentType) {
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

const taskUrl = () => `/api/tasks/${enc(S.task)}`;
const catUrl = (c) => `${taskUrl()}/categories/${enc(c || S.category)}`;

// ------------------------------------------------------------------ tasks

async function loadTasks(select) {
  const tasks = await api("GET", "/api/tasks");
  const sel = $("task-select");
  sel.innerHTML = '<option value="">(none)</option>';
  for (const t of tasks) {
    const o = document.createElement("option");
    o.value = t.name; o.textContent = t.name;
    sel.appendChild(o);
  }
  const want = select !== undefined ? select : (S.task || (tasks[0] && tasks[0].name) || "");
  sel.value = tasks.some((t) => t.name === want) ? want : "";
  await selectTask(sel.value);
}

async function selectTask(name) {
  stopLive();
  S.task = name; S.category = "";
  S.instant = null; S.instantStarted = false; S.userStopped = false;
  localStorage.setItem("nanoclass.task", name);
  await loadTask();
  await loadRuns();
  await followTraining(false);
  scheduleInstant(0);
}

async function loadTask() {
  const ul = $("categories");
  ul.innerHTML = "";
  $("thumbs").innerHTML = "";
  closeEditor();
  if (!S.task) { setKind("classification"); $("task-kind-badge").hidden = true; updateCaptureButton(); return; }
  const t = await api("GET", taskUrl());
  setKind(t.kind || "classification");
  if (!t.categories.some((c) => c.name === S.category)) {
    S.category = t.categories.length ? t.categories[0].name : "";
  }
  for (const c of t.categories) {
    const li = document.createElement("li");
    li.className = "category" + (c.name === S.category ? " selected" : "");
    li.dataset.name = c.name;
    const name = document.createElement("span");
    name.className = "name"; name.textContent = c.name; name.title = "select";
    name.onclick = () => { S.category = c.name; loadTask(); };
    const count = document.createElement("span");
    count.className = "count"; count.textContent = c.count;
    const ren = document.createElement("button");
    ren.textContent = "Rename"; ren.className = "rename";
    ren.onclick = () => renameCategory(c.name);
    const del = document.createElement("button");
    del.textContent = "Delete"; del.className = "danger delete";
    del.onclick = () => deleteCategory(c.name);
    li.append(name, count, ren, del);
    ul.appendChild(li);
  }
  updateCaptureButton();
  await loadThumbs();
}

function setCount(category, count) {
  const li = document.querySelector(`li.category[data-name="${CSS.escape(category)}"] .count`);
  if (li) li.textContent = count;
}

async function renameCategory(old) {
  const name = prompt(`Rename category "${old}" to:`, old);
  if (!name || name === old) return;
  try {
    await api("PATCH", catUrl(old), { name });
    if (S.category === old) S.category = name;
    show(`renamed "${old}" to "${name}"; models trained before must be retrained`);
    await loadTask(); await loadRuns(); scheduleInstant(0);
  } catch (e) { show(e.message, "error"); }
}

async function deleteCategory(name) {
  if (!confirm(`Delete category "${name}" and its images? (They are moved to the task's trash folder.)`)) return;
  try {
    await api("DELETE", catUrl(name));
    show(`deleted "${name}"`);
    if (S.live && S.live.instant) clearBars();
    await loadTask(); await loadRuns(); scheduleInstant(0);
  } catch (e) { show(e.message, "error"); }
}


// Shows what the selected task predicts and switches the page between capture (classification)
// and click-to-label (regression).
function setKind(kind) {
  S.kind = kind;
  const reg = kind === "regression";
  const badge = $("task-kind-badge");
  badge.textContent = reg ? "regression · points" : "classification";
  badge.dataset.kind = kind; badge.hidden = !S.task;
  $("stage").classList.toggle("pointing", reg);
  $("capture-row").hidden = reg;
  $("train-note").textContent = reg
    ? "The held-out figure is the mean distance between predicted and clicked points, in pixels of the model input, on images never trained on."
    : "Accuracy is measured on held-out images (never the training images).";
  updatePointHint();
}

function updatePointHint() {
  const h = $("point-hint");
  h.hidden = S.kind !== "regression";
  h.textContent = S.category
    ? `Click the point of "${S.category}" in the frame: that frame is saved with the point.`
    : "Add a category, then click its point in the frame to save the frame.";
}

// Where the picture of an <img> or <video> is drawn on the page: the content box (borders and
// padding removed) with object-fit and a centred object-position applied. Returns the page
// position (CSS pixels, client coordinates) of image pixel (0, 0) and the scale in CSS pixels
// per image pixel on each axis; null before the picture has a size.
function pictureRect(el) {
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
function clickToPixel(el, e) {
  const p = pictureRect(el);
  if (!p) return null;
  const x = (e.clientX - p.left) / p.sx, y = (e.clientY - p.top) / p.sy;
  if (x < 0 || y < 0 || x > p.width || y > p.height) return null;
  return { x: Math.min(p.width - 1, Math.round(x)), y: Math.min(p.height - 1, Math.round(y)), width: p.width, height: p.height };
}

// The frame on show (the browser camera's <video> or the device camera's <img>) as a JPEG of
// its own pixel size: exactly the picture the user clicked.
function grabShown(el) {
  return new Promise((resolve, reject) => {
    const w = el.naturalWidth || el.videoWidth, h = el.naturalHeight || el.videoHeight;
    if (!w || !h) { reject(new Error("the camera has no picture yet")); return; }
    const c = $("grab");
    c.width = w; c.height = h;
    c.getContext("2d").drawImage(el, 0, 0, w, h);
    c.toBlob((b) => (b ? resolve(b) : reject(new Error("could not encode the frame"))), "image/jpeg", 0.92);
  });
}

let pointInflight = false;
// Regression: a click on the live frame saves that frame with the clicked point.
async function savePointClick(e) {
  if (S.kind !== "regression" || !S.task || pointInflight) return;
  if (!S.category) { show("add a category first, then click its point in the frame", "error"); return; }
  const el = e.currentTarget;
  const p = clickToPixel(el, e);
  if (!p) return;
  pointInflight = true;
  const cat = S.category;
  try {
    const blob = await grabShown(el);
    const r = await fetch(`${catUrl(cat)}/points?x=${p.x}&y=${p.y}`, { method: "POST", body: blob, headers: { "Content-Type": "image/jpeg" }, credentials: "same-origin" });
    const data = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(data.error || r.statusText);
    S.pointsSaved.push({ name: data.saved[0], x: p.x, y: p.y, count: data.count });
    S.captures += 1;
    setCount(cat, data.count);
    show(`saved ${data.saved[0]} (point ${p.x}, ${p.y}) to "${cat}"`);
    scheduleThumbs();
  } catch (err) {
    show("save point: " + err.message, "error");
  } finally {
    pointInflight = false;
  }
}

const COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#fabed4", "#469990"];
const colourOf = (i) => COLOURS[i % COLOURS.length];

// ------------------------------------------------------------------ camera

function cameraMessage(text) {
  const m = $("camera-msg");
  m.textContent = text || "";
  m.hidden = !text;
}

async function useSource(kind) {
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

async function refreshSource() {
  const st = await api("GET", "/api/source");
  S.deviceSource = st;
  $("source-desc").textContent = st.uri ? (st.description || st.uri) + (st.error ? " — " + st.error : "") : "no device camera";
  if (st.uri && !$("source-uri").value) $("source-uri").value = st.uri;
  return st;
}

async function setDeviceSource() {
  const uri = $("source-uri").value.trim();
  if (!uri) return;
  try {
    S.deviceSource = await api("PUT", "/api/source", { uri });
    await refreshSource();
    show("device camera: " + (S.deviceSource.description || uri));
    await useSource("device");
  } catch (e) { cameraMessage(e.message); }
}

function cameraReady() {
  if (S.source === "device") return !!(S.deviceSource && S.deviceSource.uri);
  const v = $("video");
  return !!(S.stream && v.videoWidth > 0);
}

function updateCaptureButton() {
  updatePointHint();
  $("capture").disabled = !(S.task && S.category && (S.source === "device" ? S.deviceSource && S.deviceSource.uri : S.stream));
}

function grabBlob() {
  return new Promise((resolve, reject) => {
    const v = $("video");
    if (!v.videoWidth) { reject(new Error("the camera has no picture yet")); return; }
    const c = $("grab");
    c.width = v.videoWidth; c.height = v.videoHeight;
    c.getContext("2d").drawImage(v, 0, 0);
    c.toBlob((b) => (b ? resolve(b) : reject(new Error("could not encode the frame"))), "image/jpeg", 0.9);
  });
}

// ------------------------------------------------------------------ capture

let inflight = false;
let holdTimer = null, holdInterval = null;

async function captureOnce() {
  if (!S.task || !S.category || inflight) return;
  inflight = true;
  const cat = S.category;
  try {
    let r;
    if (S.source === "device") {
      r = await api("POST", `${catUrl(cat)}/capture`);
    } else {
      const blob = await grabBlob();
      r = await fetch(`${catUrl(cat)}/images`, { method: "POST", body: blob, headers: { "Content-Type": "image/jpeg" }, credentials: "same-origin" });
      const data = await r.json().catch(() => ({}));
      if (!r.ok) throw new Error(data.error || r.statusText);
      r = data;
    }
    S.captures += 1;
    setCount(cat, r.count);
    scheduleThumbs();
    scheduleInstant();
  } catch (e) {
    show("capture: " + e.message, "error");
    stopHold();
  } finally {
    inflight = false;
  }
}

function startHold() {
  stopHold();
  captureOnce();
  holdTimer = setTimeout(() => {
    const rate = Math.max(1, Math.min(30, Number($("capture-rate").value) || 5));
    $("capture").classList.add("holding");
    holdInterval = setInterval(captureOnce, 1000 / rate);
  }, 350);
}

function stopHold() {
  clearTimeout(holdTimer); clearInterval(holdInterval);
  holdTimer = holdInterval = null;
  $("capture").classList.remove("holding");
}

// ------------------------------------------------------------------ images

let thumbsTimer = null;
function scheduleThumbs() {
  clearTimeout(thumbsTimer);
  thumbsTimer = setTimeout(loadThumbs, 400);
}

// ------------------------------------------------------------------ instant preview

let instantTimer = null;
function scheduleInstant(ms) {
  clearTimeout(instantTimer);
  instantTimer = setTimeout(loadInstant, ms === undefined ? 300 : ms);
}

// Refreshes the instant model's status; starts the preview the first time it is ready.
async function loadInstant() {
  if (!S.task || S.kind === "regression") return;
  const task = S.task;
  let st = null;
  try { st = await api("GET", `${taskUrl()}/instant`); } catch (e) { st = { ready: false, note: e.message, off: true }; }
  if (task !== S.task) return;
  if (st.update && (!S.instant || S.instant.version !== st.version)) S.instantUpdates.push({ images: st.images, head: st.head, ...st.update });
  S.instant = st;
  const opt = [...$("live-model").options].find((o) => o.value === "instant");
  if (opt) opt.textContent = instantLabel();
  if ($("live-model").value === "instant") {
    checkModel();
    if (st.ready && !S.live && !S.userStopped && cameraReady()) { S.instantStarted = true; startLive(); }
  }
}

function instantLabel() {
  const st = S.instant;
  if (!st || !st.ready) return "Instant preview (waiting for images)";
  return `Instant preview · ${st.head} on ${st.images} images`;
}

let nextTimer = null;
async function loadNext() {
  clearTimeout(nextTimer);
  const panel = $("next-panel");
  if (!S.live || !S.live.instant) { panel.hidden = true; return; }
  nextTimer = setTimeout(loadNext, 2000);
  let rows = [];
  try { rows = await api("GET", `${taskUrl()}/instant/uncertain?n=4`); } catch (_) { return; }
  const list = $("next-list");
  // Redrawn only when the frames change, and never under the pointer: a button about to be
  // clicked stays where it is.
  const key = rows.map((r) => `${r.id}:${r.top1}`).join(",");
  if (key === S.nextKey || list.matches(":hover")) return;
  S.nextKey = key;
  list.innerHTML = "";
  panel.hidden = rows.length === 0;
  const cats = (S.instant && S.instant.labels) || [];
  for (const r of rows) {
    const d = document.createElement("div");
    d.className = "next-item"; d.dataset.id = r.id; d.dataset.top1 = r.top1;
    const img = document.createElement("img");
    img.alt = `frame ${r.id}`; img.src = `${taskUrl()}/instant/frames/${r.id}`;
    const t = document.createElement("span");
    t.textContent = `${r.top1}? ${(100 * r.probability).toFixed(0)}% · margin ${r.margin.toFixed(2)}`;
    const files = document.createElement("div");
    files.className = "files";
    for (const c of cats) {
      const b = document.createElement("button");
      b.textContent = "→ " + c; b.dataset.category = c;
      b.onclick = async () => {
        try {
          const res = await api("POST", `${taskUrl()}/instant/frames/${r.id}/file`, { category: c });
          setCount(c, res.count); d.remove(); show(`filed a frame into "${c}"`);
          S.filed = (S.filed || 0) + 1;
          if (c === S.category) scheduleThumbs();
          scheduleInstant();
        } catch (e) { show(e.message, "error"); }
      };
      files.appendChild(b);
    }
    d.append(img, t, files);
    list.appendChild(d);
  }
}

async function loadThumbs() {
  const box = $("thumbs");
  if (!S.task || !S.category) { box.innerHTML = ""; return; }
  const cat = S.category;
  const imgs = await api("GET", `${catUrl(cat)}/images`);
  if (cat !== S.category) return;
  box.innerHTML = "";
  for (const im of imgs.slice().reverse()) {
    const d = document.createElement("div");
    d.className = "thumb";
    d.dataset.name = im.name;
    const img = document.createElement("img");
    img.loading = "lazy"; img.alt = im.name;
    img.src = `${catUrl(cat)}/images/${enc(im.name)}/thumb`;
    let shown = img;
    if (im.point && im.size) {
      // Regression: the point drawn over the thumbnail; a click opens it larger to correct it.
      d.classList.add("point");
      d.dataset.x = im.point[0]; d.dataset.y = im.point[1];
      const frame = document.createElement("div");
      frame.className = "frame";
      frame.style.aspectRatio = `${im.size[0]} / ${im.size[1]}`;
      const dot = document.createElement("span");
      dot.className = "dot";
      dot.style.left = (100 * im.point[0] / im.size[0]).toFixed(3) + "%";
      dot.style.top = (100 * im.point[1] / im.size[1]).toFixed(3) + "%";
      dot.style.background = colourOf(categoryIndex(cat));
      frame.append(img, dot);
      frame.title = `point (${im.point[0]}, ${im.point[1]}): click to correct it`;
      frame.onclick = () => openEditor(cat, im.name);
      shown = frame;
    }
    const del = document.createElement("button");
    del.textContent = "×"; del.title = "delete this image";
    del.onclick = async () => {
      try {
        await api("DELETE", `${catUrl(cat)}/images/${enc(im.name)}`);
        d.remove();
        const t = await api("GET", taskUrl());
        for (const c of t.categories) setCount(c.name, c.count);
        scheduleInstant();
      } catch (e) { show(e.message, "error"); }
    };
    d.append(shown, del);
    box.appendChild(d);
  }
}

// Index of a category in label order (the order the page lists them).
function categoryIndex(name) {
  const names = [...document.querySelectorAll("li.category")].map((li) => li.dataset.name);
  return Math.max(0, names.indexOf(name));
}

// The thumbnail editor: the image larger with its point; a click moves the point (the server
// renames the file to the new <x>_<y>_<uuid>.jpg).
function openEditor(cat, name) {
  const m = /^(\d+)_(\d+)_/.exec(name);
  if (!m) return;
  S.editor = { category: cat, name, x: Number(m[1]), y: Number(m[2]) };
  const img = $("editor-img");
  img.onload = drawEditor;
  img.src = `${catUrl(cat)}/images/${enc(name)}`;
  $("point-editor").hidden = false;
  drawEditor();
}

function closeEditor() {
  S.editor = null;
  $("point-editor").hidden = true;
  $("editor-img").removeAttribute("src");
}

function drawEditor() {
  const ed = S.editor, img = $("editor-img"), dot = $("editor-dot");
  if (!ed) return;
  $("editor-info").textContent = `${ed.name} · point (${ed.x}, ${ed.y})`;
  $("point-editor").dataset.name = ed.name;
  if (!img.naturalWidth) { dot.hidden = true; return; }
  dot.hidden = false;
  dot.style.left = (100 * ed.x / img.naturalWidth).toFixed(3) + "%";
  dot.style.top = (100 * ed.y / img.naturalHeight).toFixed(3) + "%";
  dot.style.background = colourOf(categoryIndex(ed.category));
}

async function editorClick(e) {
  const ed = S.editor;
  if (!ed) return;
  const p = clickToPixel($("editor-img"), e);
  if (!p) return;
  try {
    const r = await api("PUT", `${catUrl(ed.category)}/images/${enc(ed.name)}/point`, { x: p.x, y: p.y });
    Object.assign(ed, { name: r.name, x: r.point[0], y: r.point[1] });
    drawEditor();
    setCount(ed.category, r.count);
    show(`moved the point to (${r.point[0]}, ${r.point[1]}): ${r.name}`);
    await loadThumbs();
  } catch (err) { show("move point: " + err.message, "error"); }
}

async function uploadFiles(files) {
  if (!S.task || !S.category) { show("choose a task and a category first", "error"); return; }
  const list = Array.from(files).filter((f) => f.size > 0);
  if (!list.length) return;
  const fd = new FormData();
  for (const f of list) fd.append("file", f, f.name);
  try {
    const r = await api("POST", `${catUrl()}/images`, fd);
    setCount(S.category, r.count);
    show(`added ${r.saved.length} image(s) to "${S.category}"`);
    scheduleInstant();
    await loadThumbs();
  } catch (e) { show("upload: " + e.message, "error"); }
}

async function importFolder() {
  const path = $("import-path").value.trim();
  if (!path || !S.task || !S.category) return;
  try {
    const r = await api("POST", `${catUrl()}/import`, { path });
    setCount(S.category, r.count);
    show(`imported ${r.imported} image(s)` + (r.skipped.length ? `, skipped ${r.skipped.length}: ` + r.skipped.map((s) => s.reason).join("; ") : ""));
    scheduleInstant();
    await loadThumbs();
  } catch (e) { show("import: " + e.message, "error"); }
}

// ------------------------------------------------------------------ training

let trainEvents = null;

async function startTraining() {
  if (!S.task) { show("create a task first", "error"); return; }
  const body = {
    arch: $("train-arch").value,
    mode: $("train-mode").value,
    epochs: Number($("train-epochs").value),
    batch_size: Number($("train-batch").value),
    lr: Number($("train-lr").value),
  };
  // Augmentation: sent only when the user set it; the mode's own otherwise.
  if ($("train-crop-min").value !== "") body.crop_scale = [Number($("train-crop-min").value), 1.0];
  if ($("train-jitter").value !== "") body.jitter = Number($("train-jitter").value);
  if ($("train-flip").value !== "") body.flip = $("train-flip").value === "on";
  S.times = { trainClicked: performance.now(), firstEpoch: null, done: null };
  try {
    await api("POST", `${taskUrl()}/train`, body);
    await followTraining(true);
  } catch (e) {
    $("train-status").textContent = e.message;
    show("train: " + e.message, "error");
  }
}

async function followTraining(fresh) {
  if (trainEvents) { trainEvents.close(); trainEvents = null; }
  S.chart = []; drawChart();
  $("train-result").innerHTML = "";
  $("train-progress").value = 0;
  delete $("train-status").dataset.state; // the outcome shown belongs to the job followed now
  if (!S.task) return;
  const st = await api("GET", `${taskUrl()}/train`);
  if (st.state === "idle") { $("train-status").textContent = "idle"; setTraining(false); return; }
  if (!fresh && st.state !== "running") {
    // A finished job: show its outcome without streaming.
    for (const ev of st.events) onTrainEvent(ev, true);
    setTraining(false);
    return;
  }
  setTraining(true);
  const task = S.task;
  trainEvents = new EventSource(`${taskUrl()}/train/events`);
  trainEvents.onmessage = (m) => { if (S.task === task) onTrainEvent(JSON.parse(m.data), false); };
  trainEvents.onerror = () => { if (trainEvents) { trainEvents.close(); trainEvents = null; } };
}

function setTraining(on) {
  $("train-start").disabled = on;
  $("train-stop").disabled = !on;
}

const pct = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%");
const pxs = (x) => (x === null || x === undefined ? "–" : x.toFixed(1) + " px");
// The held-out figure of an epoch or a run: top-1 (classification) or mean point error.
const heldOut = (top1, errorPx) => (errorPx !== null && errorPx !== undefined ? `held-out error ${pxs(errorPx)}` : `held-out top-1 ${pct(top1)}`);

function onTrainEvent(ev, replay) {
  const status = $("train-status");
  const secs = () => S.times.trainClicked !== null ? ` · ${((performance.now() - S.times.trainClicked) / 1000).toFixed(1)} s` : "";
  switch (ev.type) {
    case "features":
      status.textContent = `reading images through the backbone ${ev.done}/${ev.total}${secs()}`;
      $("train-progress").value = ev.total ? 0.2 * ev.done / ev.total : 0;
      break;
    case "phase":
      S.totalEpochs = Math.max(S.totalEpochs && S.chart.length ? S.totalEpochs : 0, 0) + ev.epochs;
      break;
    case "step":
      status.textContent = `epoch ${ev.epoch} · step ${ev.step}/${ev.steps} · loss ${ev.loss.toFixed(4)}${secs()}`;
      break;
    case "epoch":
      if (!replay && S.times.firstEpoch === null && S.times.trainClicked !== null) S.times.firstEpoch = performance.now();
      S.chart.push(ev); drawChart();
      status.textContent = `epoch ${ev.epoch}/${S.totalEpochs || "?"} · loss ${ev.train_loss.toFixed(4)} · ${heldOut(ev.val_top1, ev.val_error_px)}${secs()}`;
      $("train-progress").value = S.totalEpochs ? 0.2 + 0.8 * ev.epoch / S.totalEpochs : 0;
      break;
    case "warn":
      show(ev.message, "warn");
      break;
    case "done":
      if (!replay) S.times.done = performance.now();
      $("train-progress").value = 1;
      status.textContent = `done: run ${ev.run}, best ${heldOut(ev.best_val_top1, ev.best_val_error_px)} (epoch ${ev.best_epoch}, ${ev.val_images} held-out images)${secs()}`;
      status.dataset.state = "done";
      renderEval(ev.eval);
      setTraining(false);
      if (!replay) switchToRun(ev);
      break;
    case "stopped":
      status.textContent = `stopped: ${ev.message}` + (ev.kept ? " (the model of the completed epochs is kept)" : "");
      status.dataset.state = "stopped";
      setTraining(false);
      if (!replay) loadRuns();
      break;
    case "error":
      status.textContent = "training failed: " + ev.message;
      status.dataset.state = "error";
      show("training failed: " + ev.message, "error");
      setTraining(false);
      break;
  }
}

// After training, the live view moves to the new model and says so.
async function switchToRun(ev) {
  const wasLive = !!S.live;
  await loadRuns(ev.run);
  if ($("live-model").value !== String(ev.run)) return;
  // The bars left from the preview are not this model's scores.
  clearBars();
  const m = $("live-msg");
  m.textContent = `Now showing the trained model: run ${ev.run} (${heldOut(ev.best_val_top1, ev.best_val_error_px)}).` + (S.kind === "regression" ? "" : " The instant preview stays in the model list.");
  m.hidden = false; m.dataset.switched = String(ev.run);
  if (wasLive) startLive();
}

function drawChart() {
  const c = $("train-chart"), g = c.getContext("2d");
  const W = c.width, H = c.height, L = 34, R = 34, T = 10, B = 20;
  g.clearRect(0, 0, W, H);
  g.font = "11px system-ui, sans-serif";
  g.strokeStyle = "#d8dce1"; g.strokeRect(L, T, W - L - R, H - T - B);
  const pts = S.chart;
  const reg = pts.some((p) => p.val_error_px !== null && p.val_error_px !== undefined);
  g.fillStyle = "#69707a";
  g.fillText("loss", 2, T + 8); g.fillText(reg ? "error" : "top-1", W - R + 2, T + 8);
  g.fillText("epoch", W / 2 - 14, H - 4);
  if (!pts.length) return;
  const n = Math.max(S.totalEpochs, pts.length, 2);
  const maxLoss = Math.max(...pts.map((p) => Math.max(p.train_loss, p.val_loss || 0)), 1e-6);
  const x = (e) => L + (W - L - R) * (e - 1) / (n - 1);
  const yl = (v) => T + (H - T - B) * (1 - v / maxLoss);
  // Right axis: top-1 in [0, 1], or the held-out point error in px from 0 to the largest seen.
  const maxErr = reg ? Math.max(...pts.map((p) => p.val_error_px || 0), 1e-6) : 1;
  const ya = (v) => T + (H - T - B) * (1 - v / maxErr);
  const line = (color, f) => {
    g.strokeStyle = color; g.lineWidth = 2; g.beginPath();
    let started = false;
    for (const p of pts) { const v = f(p); if (v === null || v === undefined) continue; const X = x(p.epoch), Y = v; if (!started) { g.moveTo(X, Y); started = true; } else g.lineTo(X, Y); }
    g.stroke();
  };
  line("#1f6feb", (p) => yl(p.train_loss));
  line("#f59e0b", (p) => (p.val_loss === null ? null : yl(p.val_loss)));
  const right = (p) => (reg ? p.val_error_px : p.val_top1);
  line("#2e7d32", (p) => (right(p) === null || right(p) === undefined ? null : ya(right(p))));
  g.fillStyle = "#1f6feb"; g.fillText("train loss", L + 4, H - B - 4);
  g.fillStyle = "#f59e0b"; g.fillText("held-out loss", L + 70, H - B - 4);
  g.fillStyle = "#2e7d32"; g.fillText(reg ? "held-out error (px)" : "held-out top-1", L + 160, H - B - 4);
  g.fillStyle = "#69707a"; g.fillText(maxLoss.toFixed(2), 2, T + 20); g.fillText(reg ? maxErr.toFixed(0) + "px" : "100%", W - R + 2, T + 20);
}

function renderEval(ev) {
  const box = $("train-result");
  box.innerHTML = "";
  if (!ev) return;
  if (ev.task === "regression") { renderPointErrors(ev, box); return; }
  const cm = ev.confusion;
  const t = document.createElement("table");
  t.className = "cm"; t.id = "confusion";
  const head = document.createElement("tr");
  head.innerHTML = "<th>true \\ predicted</th>" + cm.classes.map((c) => `<th>${esc(c)}</th>`).join("") + "<th>accuracy</th>";
  t.appendChild(head);
  cm.counts.forEach((row, i) => {
    const tr = document.createElement("tr");
    const rec = ev.per_class[i] ? ev.per_class[i].recall : null;
    tr.innerHTML = `<th>${esc(cm.classes[i])}</th>` + row.map((v, j) => `<td class="${i === j ? "diag" : ""}">${v}</td>`).join("") + `<td>${pct(rec)}</td>`;
    t.appendChild(tr);
  });
  const cap = document.createElement("div");
  cap.className = "muted small";
  cap.textContent = `Held-out images: ${ev.n}, top-1 ${pct(ev.top1)}. Rows: true category; columns: predicted.`;
  box.append(cap, t);
}

// Regression: the held-out point error per category (mean, 90th percentile, largest), in
// pixels of the model input; no confusion matrix.
function renderPointErrors(ev, box) {
  const t = document.createElement("table");
  t.className = "errors"; t.id = "point-errors";
  t.innerHTML = '<tr><th>category</th><th>images</th><th>mean</th><th title="90th percentile">p90</th><th>max</th></tr>';
  for (const c of [...ev.per_category, ev.overall]) {
    const tr = document.createElement("tr");
    tr.dataset.category = c.category;
    tr.innerHTML = `<th>${esc(c.category)}</th><td>${c.n}</td><td class="mean">${pxs(c.mean_px)}</td><td>${pxs(c.p90_px)}</td><td>${pxs(c.max_px)}</td>`;
    t.appendChild(tr);
  }
  const cap = document.createElement("div");
  cap.className = "muted small";
  cap.textContent = `Held-out point error (mean, 90th percentile, largest) in ${ev.pixel_space}` + (ev.out_of_view ? `; ${ev.out_of_view} image(s) with the point outside the model's view were not scored.` : ".");
  const wrap = document.createElement("div");
  wrap.className = "table-scroll";
  wrap.appendChild(t);
  box.append(cap, wrap);
}

function esc(s) { const d = document.createElement("div"); d.textContent = s; return d.innerHTML; }

// ------------------------------------------------------------------ live

async function loadRuns(select) {
  const sel = $("live-model");
  const keep = select !== undefined ? String(select) : sel.value;
  sel.innerHTML = "";
  S.runs = S.task ? await api("GET", `${taskUrl()}/runs`) : [];
  // The instant preview scores categories: classification tasks only.
  const instant = S.task && S.kind !== "regression";
  if (instant) {
    const o = document.createElement("option");
    o.value = "instant"; o.textContent = instantLabel();
    sel.appendChild(o);
  }
  for (const r of S.runs.filter((r) => r.ready)) {
    const o = document.createElement("option");
    o.value = r.id;
    o.textContent = `run ${r.id} · ${r.arch} ${r.mode} · ${r.task === "regression" ? "held-out error " + pxs(r.best_val_error_px) : "held-out " + pct(r.best_val_top1)}` + (r.stale ? " · retrain needed" : "") + (r.task !== S.kind ? ` · ${r.task} model` : "");
    sel.appendChild(o);
  }
  const first = instant ? 1 : 0; // the newest trained run
  if ([...sel.options].some((o) => o.value === keep)) sel.value = keep;
  else if (sel.options.length > first) sel.value = sel.options[first].value;
  checkModel();
}

function selectedRun() {
  const v = $("live-model").value;
  if (v === "instant") return { instant: true };
  const id = Number(v);
  return S.runs.find((r) => r.id === id);
}

function checkModel() {
  const r = selectedRun();
  const m = $("live-msg");
  if (r && r.instant) {
    const st = S.instant;
    const ready = !!(st && st.ready);
    m.textContent = ready ? "" : ((st && st.note) || "The preview starts when every category has an image.");
    m.hidden = ready || !S.task;
    $("live-start").disabled = !ready;
    if (!ready) { stopLive(); clearBars(); }
    return ready;
  }
  if (!r) { m.textContent = S.task ? "No trained model yet: train one above." : ""; m.hidden = !S.task; $("live-start").disabled = true; stopLive(); return false; }
  if (r.task !== S.kind) {
    // Never run a classifier on a regression task or a point model on a classification task.
    m.textContent = `Run ${r.id} is a ${r.task} model and this is a ${S.kind} task: it cannot run here. Train a ${S.kind} model on this task's images.`;
    m.hidden = false; m.dataset.refused = "kind"; $("live-start").disabled = true; stopLive(); clearBars(); return false;
  }
  delete m.dataset.refused;
  if (r.stale) { m.textContent = r.note; m.hidden = false; $("live-start").disabled = true; stopLive(); clearBars(); return false; }
  m.textContent = r.note || ""; m.hidden = !r.note;
  $("live-start").disabled = false;
  return true;
}

function clearBars() { clearPoints(); $("live-bars").innerHTML = ""; $("live-top1").textContent = "–"; delete $("live-top1").dataset.label; $("live-fps").textContent = ""; $("live-preview").hidden = true; }

function liveQuery() {
  return `smoothing=${$("live-smoothing").value}&threshold=${$("live-threshold").value}`;
}

function stopLive() {
  if (!S.live) return;
  S.live.stopped = true;
  if (S.live.es) S.live.es.close();
  S.live = null;
  $("live-start").textContent = "Start live";
  S.liveTimes = [];
  $("live-preview").hidden = true;
  drawOverlay();
  loadNext();
}

function startLive() {
  stopLive();
  if (!checkModel()) return;
  const run = selectedRun();
  const url = run.instant ? `${taskUrl()}/instant` : `${taskUrl()}/runs/${run.id}`;
  const live = { stopped: false, es: null, instant: !!run.instant };
  S.live = live;
  $("live-start").textContent = "Stop live";
  if (live.instant) setTimeout(loadNext, 1500);
  if (S.source === "device") {
    live.es = new EventSource(`${url}/live?${liveQuery()}`);
    live.es.onmessage = (m) => {
      const v = JSON.parse(m.data);
      if (v.type === "waiting") { clearBars(); $("live-msg").textContent = v.message || ""; $("live-msg").hidden = !v.message; return; }
      if (v.type === "stale") { stopLive(); loadRuns(); $("live-msg").textContent = v.message; $("live-msg").hidden = false; clearBars(); return; }
      renderScores(v);
    };
    live.es.onerror = async () => {
      if (live.stopped) return;
      // A refused stream (stale model, no source) closes at once: say why.
      try { await api("GET", "/api/source"); await loadRuns(); } catch (_) { /* shown elsewhere */ }
    };
  } else {
    (async () => {
      while (!live.stopped) {
        try {
          const blob = await grabBlob();
          const r = await fetch(`${url}/predict?${liveQuery()}`, { method: "POST", body: blob, headers: { "Content-Type": "image/jpeg" }, credentials: "same-origin" });
          const v = await r.json();
          if (live.stopped) break;
          if (!r.ok) { stopLive(); $("live-msg").textContent = v.error; $("live-msg").hidden = false; if (r.status === 409) { clearBars(); loadRuns(); } break; }
          if (v.type === "waiting") { clearBars(); $("live-msg").textContent = v.message || ""; $("live-msg").hidden = !v.message; await new Promise((res) => setTimeout(res, 300)); continue; }
          renderScores(v);
        } catch (e) {
          await new Promise((res) => setTimeout(res, 300));
        }
      }
    })();
  }
}

function renderScores(v) {
  S.lastScores = v;
  S.liveCount += 1;
  const now = performance.now();
  S.liveTimes.push(now);
  while (S.liveTimes.length && now - S.liveTimes[0] > 2000) S.liveTimes.shift();
  if (S.liveTimes.length > 1) S.fps = (S.liveTimes.length - 1) * 1000 / (now - S.liveTimes[0]);
  $("live-fps").textContent = `${S.fps.toFixed(1)} fps · ${v.ms.toFixed(0)} ms/frame`;
  const pv = $("live-preview");
  if (v.preview) {
    pv.textContent = `Preview: instant model (${v.head}) on ${v.images} images, refitted on every capture. Press Train for the full model.`;
    pv.dataset.images = v.images; pv.hidden = false; $("live-msg").hidden = true;
  } else { pv.hidden = true; }
  if (v.points) { renderPoints(v); return; }
  const top = $("live-top1");
  if (v.label) { top.textContent = `${v.label} ${(100 * v.top[1]).toFixed(0)}%`; top.dataset.label = v.label; }
  else { top.textContent = "unsure"; top.dataset.label = ""; }
  const bars = $("live-bars");
  if (bars.children.length !== v.labels.length || bars.dataset.run !== String(v.run) || [...bars.children].some((b, i) => b.dataset.label !== v.labels[i])) {
    bars.innerHTML = ""; bars.dataset.run = v.run;
    for (const l of v.labels) {
      const b = document.createElement("div");
      b.className = "bar"; b.dataset.label = l;
      b.innerHTML = `<span class="l">${esc(l)}</span><span class="track"><span class="fill" style="display:block;width:0"></span></span><span class="p"></span>`;
      bars.appendChild(b);
    }
  }
  v.labels.forEach((l, i) => {
    const b = bars.children[i];
    b.classList.toggle("top", v.top && v.top[0] === i);
    b.querySelector(".fill").style.width = (100 * v.probs[i]).toFixed(1) + "%";
    b.querySelector(".p").textContent = (100 * v.probs[i]).toFixed(0) + "%";
  });
}

// Regression live view: a marker per category (its colour and name) at the predicted point,
// drawn over the frame on show; the points are listed under it (data-x, data-y: pixels of the
// scored frame).
function renderPoints(v) {
  $("live-bars").innerHTML = "";
  const top = $("live-top1");
  top.textContent = `${v.points.length} point${v.points.length === 1 ? "" : "s"}`; top.dataset.label = "";
  const list = $("live-points");
  if (list.children.length !== v.labels.length || list.dataset.run !== String(v.run)) {
    list.innerHTML = ""; list.dataset.run = v.run;
    v.labels.forEach((l, i) => {
      const d = document.createElement("div");
      d.className = "live-point"; d.dataset.label = l;
      d.innerHTML = `<span class="swatch" style="background:${colourOf(i)}"></span><span class="l">${esc(l)}</span><span class="xy"></span>`;
      list.appendChild(d);
    });
  }
  v.points.forEach((p, i) => {
    const d = list.children[i];
    d.dataset.x = p[0].toFixed(2); d.dataset.y = p[1].toFixed(2);
    d.dataset.width = v.size[0]; d.dataset.height = v.size[1];
    d.querySelector(".xy").textContent = `(${p[0].toFixed(0)}, ${p[1].toFixed(0)}) px`;
  });
  S.lastPoints = v;
  drawOverlay();
}

function shownMedia() {
  const el = S.source === "device" ? $("device-img") : $("video");
  return el.hidden ? null : el;
}

// Draws the last predicted points over the frame on show, scaled from the scored frame's
// pixels to where the picture is on the page.
function drawOverlay() {
  const c = $("live-overlay"), stage = $("stage");
  const dpr = window.devicePixelRatio || 1;
  c.width = Math.round(stage.clientWidth * dpr); c.height = Math.round(stage.clientHeight * dpr);
  const g = c.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, stage.clientWidth, stage.clientHeight);
  const v = S.lastPoints, el = shownMedia();
  if (!v || !S.live || !el) return;
  const p = pictureRect(el);
  if (!p) return;
  const box = stage.getBoundingClientRect();
  // The scored frame may differ in size from the one on show (a browser frame is scored as
  // sent; the device stream is the scored frame): map through relative coordinates.
  const kx = p.sx * p.width / v.size[0], ky = p.sy * p.height / v.size[1];
  g.font = "bold 13px system-ui, sans-serif";
  v.points.forEach((pt, i) => {
    const X = p.left - box.left + pt[0] * kx, Y = p.top - box.top + pt[1] * ky;
    g.lineWidth = 3; g.strokeStyle = "#000";
    g.beginPath(); g.arc(X, Y, 9, 0, 2 * Math.PI); g.stroke();
    g.lineWidth = 2; g.strokeStyle = colourOf(i);
    g.beginPath(); g.arc(X, Y, 9, 0, 2 * Math.PI); g.stroke();
    g.beginPath(); g.moveTo(X - 4, Y); g.lineTo(X + 4, Y); g.moveTo(X, Y - 4); g.lineTo(X, Y + 4); g.stroke();
    g.lineWidth = 3; g.strokeStyle = "#000"; g.strokeText(v.labels[i], X + 12, Y - 8);
    g.fillStyle = colourOf(i); g.fillText(v.labels[i], X + 12, Y - 8);
  });
}

function clearPoints() {
  S.lastPoints = null;
  $("live-points").innerHTML = "";
  delete $("live-points").dataset.run;
  drawOverlay();
}

// ------------------------------------------------------------------ wiring

async function init() {
  const info = await api("GET", "/api/info");
  const arch = $("train-arch");
  for (const a of info.backbones) { const o = document.createElement("option"); o.value = o.textContent = a; arch.appendChild(o); }
  arch.value = "efficientnet_lite0";
  $("train-mode").onchange = () => { $("train-epochs").value = { frozen: 30, full: 10, finetune: 5, instant: 1, partial: 6 }[$("train-mode").value]; $("train-batch").value = $("train-mode").value === "partial" ? 32 : 16; };

  $("task-create").onclick = async () => {
    const name = $("task-name").value.trim();
    if (!name) return;
    const kind = $("task-kind").value;
    try { await api("POST", "/api/tasks", { name, kind }); $("task-name").value = ""; show(`created ${kind} task "${name}"`); await loadTasks(name); }
    catch (e) { show(e.message, "error"); }
  };
  $("task-select").onchange = (e) => selectTask(e.target.value);
  $("task-delete").onclick = async () => {
    if (!S.task || !confirm(`Delete task "${S.task}"? (It is moved to the data folder's .trash.)`)) return;
    try { await api("DELETE", taskUrl()); S.task = ""; await loadTasks(""); } catch (e) { show(e.message, "error"); }
  };
  $("cat-add").onclick = async () => {
    const name = $("cat-name").value.trim();
    if (!name || !S.task) { if (!S.task) show("create a task first", "error"); return; }
    try { await api("POST", `${taskUrl()}/categories`, { name }); $("cat-name").value = ""; S.category = name; show(`added category "${name}"`); await loadTask(); await loadRuns(); }
    catch (e) { show(e.message, "error"); }
  };
  $("cat-name").onkeydown = (e) => { if (e.key === "Enter") $("cat-add").click(); };
  $("task-name").onkeydown = (e) => { if (e.key === "Enter") $("task-create").click(); };

  $("source-browser").onchange = () => { stopLive(); useSource("browser"); };
  $("source-device").onchange = () => { stopLive(); useSource("device"); };
  $("source-set").onclick = setDeviceSource;

  const cap = $("capture");
  cap.addEventListener("pointerdown", (e) => { if (e.button === 0 && !cap.disabled) { cap.setPointerCapture && cap.setPointerCapture(e.pointerId); startHold(); } });
  for (const ev of ["pointerup", "pointercancel", "lostpointercapture"]) cap.addEventListener(ev, stopHold);
  cap.addEventListener("keydown", (e) => { if ((e.key === "Enter" || e.key === " ") && !e.repeat) { e.preventDefault(); captureOnce(); } });
  cap.addEventListener("contextmenu", (e) => e.preventDefault());

  // Regression: a click on the live frame saves it with the point; a click on the enlarged
  // thumbnail moves its point.
  $("video").addEventListener("click", savePointClick);
  $("device-img").addEventListener("click", savePointClick);
  $("editor-img").addEventListener("click", editorClick);
  $("editor-close").onclick = closeEditor;
  window.addEventListener("resize", drawOverlay);

  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); uploadFiles(e.dataTransfer.files); });
  $("file-input").onchange = (e) => { uploadFiles(e.target.files); e.target.value = ""; };
  $("import").onclick = importFolder;

  $("train-start").onclick = startTraining;
  $("train-stop").onclick = async () => { try { await api("POST", `${taskUrl()}/train/stop`); $("train-status").textContent = "stopping…"; } catch (e) { show(e.message, "error"); } };

  $("live-model").onchange = () => { stopLive(); clearBars(); checkModel(); };
  $("live-start").onclick = () => { if (S.live) { S.userStopped = true; stopLive(); } else { S.userStopped = false; startLive(); } };
  for (const id of ["live-smoothing", "live-threshold"]) {
    $(id).oninput = () => { $(id + "-v").textContent = $(id).value; };
    $(id).onchange = () => { if (S.live) startLive(); };
  }

  const st = await refreshSource();
  await loadTasks(localStorage.getItem("nanoclass.task") || undefined);
  await useSource(st.uri ? "device" : "browser");
}

window.addEventListener("error", (e) => show("page error: " + e.message, "error"));
init().catch((e) => show(e.message, "error"));
