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
  if (!S.task) { updateCaptureButton(); return; }
  const t = await api("GET", taskUrl());
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
  img.src = `/api/source/stream?g=${S.deviceSource.generation}&t=${Date.now()}`;
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
  if (!S.task) return;
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
    const img = document.createElement("img");
    img.loading = "lazy"; img.alt = im.name;
    img.src = `${catUrl(cat)}/images/${enc(im.name)}/thumb`;
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
    d.append(img, del);
    box.appendChild(d);
  }
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
      status.textContent = `epoch ${ev.epoch}/${S.totalEpochs || "?"} · loss ${ev.train_loss.toFixed(4)} · held-out top-1 ${pct(ev.val_top1)}${secs()}`;
      $("train-progress").value = S.totalEpochs ? 0.2 + 0.8 * ev.epoch / S.totalEpochs : 0;
      break;
    case "warn":
      show(ev.message, "warn");
      break;
    case "done":
      if (!replay) S.times.done = performance.now();
      $("train-progress").value = 1;
      status.textContent = `done: run ${ev.run}, best held-out top-1 ${pct(ev.best_val_top1)} (epoch ${ev.best_epoch}, ${ev.val_images} held-out images)${secs()}`;
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
  m.textContent = `Now showing the trained model: run ${ev.run} (held-out top-1 ${pct(ev.best_val_top1)}). The instant preview stays in the model list.`;
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
  g.fillStyle = "#69707a";
  g.fillText("loss", 2, T + 8); g.fillText("top-1", W - R + 2, T + 8);
  g.fillText("epoch", W / 2 - 14, H - 4);
  if (!pts.length) return;
  const n = Math.max(S.totalEpochs, pts.length, 2);
  const maxLoss = Math.max(...pts.map((p) => Math.max(p.train_loss, p.val_loss || 0)), 1e-6);
  const x = (e) => L + (W - L - R) * (e - 1) / (n - 1);
  const yl = (v) => T + (H - T - B) * (1 - v / maxLoss);
  const ya = (v) => T + (H - T - B) * (1 - v);
  const line = (color, f) => {
    g.strokeStyle = color; g.lineWidth = 2; g.beginPath();
    let started = false;
    for (const p of pts) { const v = f(p); if (v === null || v === undefined) continue; const X = x(p.epoch), Y = v; if (!started) { g.moveTo(X, Y); started = true; } else g.lineTo(X, Y); }
    g.stroke();
  };
  line("#1f6feb", (p) => yl(p.train_loss));
  line("#f59e0b", (p) => (p.val_loss === null ? null : yl(p.val_loss)));
  line("#2e7d32", (p) => (p.val_top1 === null ? null : ya(p.val_top1)));
  g.fillStyle = "#1f6feb"; g.fillText("train loss", L + 4, H - B - 4);
  g.fillStyle = "#f59e0b"; g.fillText("held-out loss", L + 70, H - B - 4);
  g.fillStyle = "#2e7d32"; g.fillText("held-out top-1", L + 160, H - B - 4);
  g.fillStyle = "#69707a"; g.fillText(maxLoss.toFixed(2), 2, T + 20); g.fillText("100%", W - R + 2, T + 20);
}

function renderEval(ev) {
  const box = $("train-result");
  box.innerHTML = "";
  if (!ev) return;
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

function esc(s) { const d = document.createElement("div"); d.textContent = s; return d.innerHTML; }

// ------------------------------------------------------------------ live

async function loadRuns(select) {
  const sel = $("live-model");
  const keep = select !== undefined ? String(select) : sel.value;
  sel.innerHTML = "";
  S.runs = S.task ? await api("GET", `${taskUrl()}/runs`) : [];
  if (S.task) {
    const o = document.createElement("option");
    o.value = "instant"; o.textContent = instantLabel();
    sel.appendChild(o);
  }
  for (const r of S.runs.filter((r) => r.ready)) {
    const o = document.createElement("option");
    o.value = r.id;
    o.textContent = `run ${r.id} · ${r.arch} ${r.mode} · held-out ${pct(r.best_val_top1)}` + (r.stale ? " · retrain needed" : "");
    sel.appendChild(o);
  }
  if ([...sel.options].some((o) => o.value === keep)) sel.value = keep;
  else if (sel.options.length > 1) sel.value = sel.options[1].value; // the newest trained run
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
  if (r.stale) { m.textContent = r.note; m.hidden = false; $("live-start").disabled = true; stopLive(); clearBars(); return false; }
  m.textContent = r.note || ""; m.hidden = !r.note;
  $("live-start").disabled = false;
  return true;
}

function clearBars() { $("live-bars").innerHTML = ""; $("live-top1").textContent = "–"; delete $("live-top1").dataset.label; $("live-fps").textContent = ""; $("live-preview").hidden = true; }

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

// ------------------------------------------------------------------ wiring

async function init() {
  const info = await api("GET", "/api/info");
  const arch = $("train-arch");
  for (const a of info.backbones) { const o = document.createElement("option"); o.value = o.textContent = a; arch.appendChild(o); }
  arch.value = "efficientnet_lite0";
  $("train-mode").onchange = () => { $("train-epochs").value = { frozen: 30, full: 10, finetune: 5, instant: 1 }[$("train-mode").value]; };

  $("task-create").onclick = async () => {
    const name = $("task-name").value.trim();
    if (!name) return;
    try { await api("POST", "/api/tasks", { name, kind: "classification" }); $("task-name").value = ""; show(`created task "${name}"`); await loadTasks(name); }
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
