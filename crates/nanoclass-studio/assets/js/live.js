// Live scores: the model list (trained runs and the instant preview), the live loop (device
// stream or browser frames), the bars, the predicted points over the frame and the frames the
// preview is least sure of.

import { api, postJpeg } from "./api.js";
import { grabBlob, cameraReady, nextFrame, shownMedia, pictureRect } from "./camera.js";
import { $, S, show, taskUrl, colourOf, esc, inView, pct, pxs, setCount, notify, viewBox } from "./state.js";

export async function loadRuns(select) {
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
    o.textContent = `run ${r.id} · ${r.arch} ${r.mode} · ${r.task === "regression" ? "held-out error " + pxs(r.eval && r.eval.overall && r.eval.overall.mean_px != null ? r.eval.overall.mean_px : r.best_val_error_px) : "held-out " + pct(r.best_val_top1) + (r.eval && r.eval.n ? ` of ${r.eval.n}` + (Array.isArray(r.eval.top1_interval) ? ` (95% ${pct(r.eval.top1_interval[0])}–${pct(r.eval.top1_interval[1])})` : "") : "")}` + (r.stale ? " · retrain needed" : "") + (r.task !== S.kind ? ` · ${r.task} model` : "");
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

// The Download link of the selected trained run: its export bundle in the chosen format.
export function updateDownload() {
  const r = selectedRun();
  const a = $("export-download");
  const trained = !!(r && !r.instant && r.ready);
  $("export-row").hidden = !trained;
  if (!trained) { a.removeAttribute("href"); return; }
  const fmt = $("export-format").value;
  a.href = `${taskUrl()}/runs/${r.id}/export?format=${encodeURIComponent(fmt)}`;
  a.setAttribute("aria-label", `Download run ${r.id} as ${$("export-format").selectedOptions[0].textContent}`);
}

export function checkModel() {
  updateDownload();
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

export function clearBars() { clearPoints(); $("live-bars").innerHTML = ""; $("live-top1").textContent = "–"; delete $("live-top1").dataset.label; $("live-fps").textContent = ""; $("live-preview").hidden = true; }

function liveQuery() {
  return `smoothing=${$("live-smoothing").value}&threshold=${$("live-threshold").value}&unknown=${$("live-unknown").checked}`;
}

export function stopLive() {
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

export function startLive() {
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
      let seen = -1;
      while (!live.stopped) {
        try {
          seen = await nextFrame(seen);
          if (live.stopped) break;
          const blob = await grabBlob();
          const r = await postJpeg(`${url}/predict?${liveQuery()}`, blob);
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
  const cam = S.source === "browser" && S.cam.fps > 0 ? `camera ${S.cam.fps.toFixed(1)} fps · ` : "";
  $("live-fps").textContent = `${cam}model ${S.fps.toFixed(1)} frames/s · ${v.ms.toFixed(0)} ms/frame`;
  const pv = $("live-preview");
  if (v.preview) {
    pv.textContent = `Preview: instant model (${v.head}) on ${v.images} images, refitted on every capture. Press Train for the full model.`;
    pv.dataset.images = v.images; pv.hidden = false; $("live-msg").hidden = true;
  } else { pv.hidden = true; }
  if (v.points) { renderPoints(v); return; }
  const top = $("live-top1");
  if (v.label) { top.textContent = `${v.label} ${(100 * v.top[1]).toFixed(0)}%`; top.dataset.label = v.label; }
  else if (v.unknown) { top.textContent = "unknown: none of these"; top.dataset.label = ""; }
  else { top.textContent = "unsure"; top.dataset.label = ""; }
  top.dataset.unknown = String(!!v.unknown);
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
    // A point predicted beside the model's view is no place the model saw: say so.
    const out = !inView({ x: p[0] - 0.5, y: p[1] - 0.5 }, v.size[0], v.size[1]);
    d.dataset.outOfView = String(out);
    d.querySelector(".xy").textContent = out ? "out of view" : `(${p[0].toFixed(0)}, ${p[1].toFixed(0)}) px`;
  });
  S.lastPoints = v;
  drawOverlay();
}

// Draws over the frame on show: the point placed with the keyboard (regression), and the last
// predicted points, scaled from the scored frame's pixels to where the picture is on the page.
export function drawOverlay() {
  const c = $("live-overlay"), stage = $("stage");
  const dpr = window.devicePixelRatio || 1;
  c.width = Math.round(stage.clientWidth * dpr); c.height = Math.round(stage.clientHeight * dpr);
  const g = c.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, stage.clientWidth, stage.clientHeight);
  const el = shownMedia();
  if (!el) return;
  const p = pictureRect(el);
  if (!p) return;
  const box = stage.getBoundingClientRect();
  if (S.kind === "regression" && S.task) {
    // The model's view: the frame's centre square, outside it dimmed.
    const v = viewBox(p.width, p.height);
    const L = p.left - box.left, T = p.top - box.top, W = p.width * p.sx, H = p.height * p.sy;
    const vx = L + v.x * p.sx, vy = T + v.y * p.sy, vw = v.side * p.sx, vh = v.side * p.sy;
    g.fillStyle = "rgba(0, 0, 0, 0.45)";
    g.fillRect(L, T, vx - L, H); g.fillRect(vx + vw, T, L + W - vx - vw, H);
    g.fillRect(vx, T, vw, vy - T); g.fillRect(vx, vy + vh, vw, T + H - vy - vh);
    g.setLineDash([6, 4]); g.lineWidth = 1.5; g.strokeStyle = "#fff";
    g.strokeRect(vx, vy, vw, vh); g.setLineDash([]);
  }
  if (S.keyPoint && S.kind === "regression") {
    const X = p.left - box.left + S.keyPoint.x * p.sx, Y = p.top - box.top + S.keyPoint.y * p.sy;
    for (const [w, colour] of [[3, "#000"], [1.5, "#fff"]]) {
      g.lineWidth = w; g.strokeStyle = colour;
      g.beginPath(); g.moveTo(X - 12, Y); g.lineTo(X - 3, Y); g.moveTo(X + 3, Y); g.lineTo(X + 12, Y);
      g.moveTo(X, Y - 12); g.lineTo(X, Y - 3); g.moveTo(X, Y + 3); g.lineTo(X, Y + 12); g.stroke();
    }
  }
  const v = S.lastPoints;
  if (!v || !S.live) return;
  // The scored frame may differ in size from the one on show (a browser frame is scored as
  // sent; the device stream is the scored frame): map through relative coordinates.
  const kx = p.sx * p.width / v.size[0], ky = p.sy * p.height / v.size[1];
  g.font = "bold 13px system-ui, sans-serif";
  v.points.forEach((pt, i) => {
    if (!inView({ x: pt[0] - 0.5, y: pt[1] - 0.5 }, v.size[0], v.size[1])) return; // listed as out of view
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

// ------------------------------------------------------------------ instant preview

let instantTimer = null;
export function scheduleInstant(ms) {
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
  // Redrawn only when the frames change, and never under the pointer or the keyboard focus: a
  // button about to be pressed stays where it is.
  const key = rows.map((r) => `${r.id}:${r.top1}`).join(",");
  if (key === S.nextKey || list.matches(":hover") || list.contains(document.activeElement)) return;
  S.nextKey = key;
  list.innerHTML = "";
  panel.hidden = rows.length === 0;
  const cats = (S.instant && S.instant.labels) || [];
  for (const r of rows) {
    const d = document.createElement("div");
    d.className = "next-item"; d.dataset.id = r.id; d.dataset.top1 = r.top1;
    d.dataset.margin = r.margin; d.dataset.unknown = String(!!r.unknown);
    const img = document.createElement("img");
    img.alt = `frame ${r.id}`; img.src = `${taskUrl()}/instant/frames/${r.id}`;
    const t = document.createElement("span");
    t.textContent = r.unknown
      ? `none of these? (nearest ${r.top1} ${(100 * r.probability).toFixed(0)}%)`
      : `${r.top1}? ${(100 * r.probability).toFixed(0)}% · margin ${r.margin.toFixed(2)}`;
    const files = document.createElement("div");
    files.className = "files";
    for (const c of cats) {
      const b = document.createElement("button");
      b.textContent = "→ " + c; b.dataset.category = c;
      b.setAttribute("aria-label", `file frame ${r.id} into ${c}`);
      b.onclick = async () => {
        try {
          const res = await api("POST", `${taskUrl()}/instant/frames/${r.id}/file`, { category: c });
          setCount(c, res.count); d.remove(); show(`filed a frame into "${c}"`);
          S.filed = (S.filed || 0) + 1;
          if (c === S.category) notify("images");
          scheduleInstant();
        } catch (e) { show(e.message, "error"); }
      };
      files.appendChild(b);
    }
    d.append(img, t, files);
    list.appendChild(d);
  }
}
