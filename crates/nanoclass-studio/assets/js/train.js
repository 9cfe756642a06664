// Training: the form, the job's events (progress, chart, outcome) and the held-out evaluation.

import { api } from "./api.js";
import { clearBars, loadRuns, startLive } from "./live.js";
import { $, S, esc, heldOut, pct, pxs, show, taskUrl } from "./state.js";

let trainEvents = null;

// Epochs, batch size and learning rate the form shows for each mode (the library's defaults).
const MODE_EPOCHS = { frozen: 30, full: 10, finetune: 5, instant: 1, partial: 6 };
const DEFAULT_CLASSIFICATION_MODE = "partial";

export function modeChanged() {
  const mode = $("train-mode").value;
  // A frozen point model stops by its held-out error: up to 300 epochs (early stopping).
  $("train-epochs").value = S.kind === "regression" && mode === "frozen" ? 300 : MODE_EPOCHS[mode];
  $("train-batch").value = mode === "partial" ? 32 : 16;
  $("train-lr").value = mode === "partial" ? 0.002 : 0.001;
  updateEstimate();
}

// The train form's settings as the API takes them (start and estimate alike).
function trainBody() {
  const body = {
    arch: $("train-arch").value,
    mode: $("train-mode").value,
    epochs: Number($("train-epochs").value),
    batch_size: Number($("train-batch").value),
    lr: Number($("train-lr").value),
  };
  if (!$("train-device-label").hidden) body.device = $("train-device").value;
  if (!$("train-precision-label").hidden) body.precision = $("train-precision").value;
  // Augmentation: sent only when the user set it; the mode's own otherwise.
  if ($("train-crop-min").value !== "") body.crop_scale = [Number($("train-crop-min").value), 1.0];
  if ($("train-jitter").value !== "") body.jitter = Number($("train-jitter").value);
  if ($("train-flip").value !== "") body.flip = $("train-flip").value === "on";
  return body;
}

// "about 40 s", "about 3 min": an expected time, rounded as an estimate should be.
function aboutTime(s) {
  if (s < 90) return `about ${Math.max(1, Math.round(s / 5) * 5 || Math.round(s))} s`;
  if (s < 5400) return `about ${Math.round(s / 60)} min`;
  return `about ${(s / 3600).toFixed(1)} h`;
}

// The expected time of training with the form's settings, shown before the user starts
// (the server counts the task's images and what its caches hold; see POST .../train/estimate).
let estimateSeq = 0;
export async function updateEstimate() {
  const el = $("train-estimate");
  if (!S.task) { el.textContent = ""; return; }
  const seq = ++estimateSeq;
  try {
    const e = await api("POST", `${taskUrl()}/train/estimate`, trainBody());
    if (seq !== estimateSeq) return; // a newer form state asked since
    if (e.seconds === null) { el.textContent = "expected time: not known for this device before its first run"; return; }
    const body = e.body_views ? `${e.body_views} image views through the backbone` + (e.cached ? ` (${e.cached} cached)` : "") : (e.cached ? `backbone pass cached (${e.cached})` : "");
    const steps = e.steps ? `${e.epochs} epochs, ${e.steps} steps` : "";
    const from = e.from === "this_machine" ? "timings of earlier runs here" : "timings of a 2-core reference machine until a first run here";
    el.textContent = `Expected: ${aboutTime(e.seconds)} — ${[body, steps].filter(Boolean).join("; ")} (${e.train_images} training, ${e.val_images} held-out images; ${from})`;
  } catch (err) {
    if (seq === estimateSeq) el.textContent = "";
  }
}

// An estimate after the images settle (captures come in bursts).
let estimateTimer = null;
export function scheduleEstimate() {
  clearTimeout(estimateTimer);
  estimateTimer = setTimeout(updateEstimate, 1000);
}

export async function startTraining() {
  if (!S.task) { show("create a task first", "error"); return; }
  const body = trainBody();
  S.times = { trainClicked: performance.now(), firstEpoch: null, done: null };
  try {
    await api("POST", `${taskUrl()}/train`, body);
    await followTraining(true);
  } catch (e) {
    if (e.status === 409) {
      // Another tab (or person) is training this task: follow that training here.
      const st = await api("GET", `${taskUrl()}/train`).catch(() => null);
      if (st && st.state === "running") {
        show("this task is already training (started elsewhere): following it", "warn");
        await followTraining(false);
        return;
      }
    }
    $("train-status").textContent = e.message;
    show("train: " + e.message, "error");
  }
}

export async function stopTraining() {
  try { await api("POST", `${taskUrl()}/train/stop`); $("train-status").textContent = "stopping…"; } catch (e) { show(e.message, "error"); }
}

// Shows the task's training job: a running one streams its events; a finished one shows its
// outcome (fresh: the job was just started here, so it is streamed whatever its state).
export async function followTraining(fresh) {
  if (trainEvents) { trainEvents.close(); trainEvents = null; }
  S.chart = []; drawChart();
  $("train-result").innerHTML = "";
  $("train-warnings").innerHTML = ""; $("train-warnings").hidden = true;
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
      addWarning(ev.message);
      break;
    case "done":
      if (!replay) S.times.done = performance.now();
      $("train-progress").value = 1;
      status.textContent = `done: run ${ev.run}, best ${heldOut(ev.best_val_top1, errorOf(ev))}${interval(ev.best_val_top1_interval)} (epoch ${ev.best_epoch}, ${ev.val_images} held-out images)${secs()}`;
      status.dataset.state = "done";
      if (ev.held_out_warning) addWarning(ev.held_out_warning);
      renderEval(ev.eval);
      setTraining(false);
      if (!replay) switchToRun(ev);
      scheduleEstimate(); // the caches are warm now, and this machine's timings recorded
      break;
    case "stopped":
      status.textContent = ev.kept ? "stopped: the model of the completed epochs is kept" : "stopped before the first epoch ended: no model was kept";
      status.dataset.state = "stopped";
      setTraining(false);
      if (!replay) loadRuns();
      break;
    case "error":
      status.textContent = "training failed: " + ev.message;
      status.dataset.state = "error";
      if (!replay) show("training failed: " + ev.message, "error");
      setTraining(false);
      break;
  }
}

// A training warning joins the list under the progress bar (each stays: one does not hide another).
function addWarning(text) {
  const li = document.createElement("li");
  li.textContent = text;
  $("train-warnings").appendChild(li);
  $("train-warnings").hidden = false;
}

// The training form's values for a task just opened: the defaults of the page, so a task
// never inherits another task's settings.
export function resetTrainForm() {
  $("train-arch").value = "efficientnet_lite0";
  // Classification trains the last layers on cached views by default: measured on the shared
  // sets, it matches or beats the frozen backbone's held-out top-1 (docs/training.md); point
  // models keep the frozen backbone (their head reads a map before any block partial trains).
  $("train-mode").value = S.kind === "regression" ? "frozen" : DEFAULT_CLASSIFICATION_MODE;
  modeChanged();
  for (const id of ["train-crop-min", "train-jitter"]) $(id).value = "";
  $("train-flip").value = "";
}

// A point model's held-out error: the evaluation of the saved model (the figure its table
// shows), else the best epoch's.
export const errorOf = (r) => (r.eval && r.eval.overall && r.eval.overall.mean_px !== null && r.eval.overall.mean_px !== undefined ? r.eval.overall.mean_px : r.best_val_error_px);

// The 95% interval of a held-out top-1, as text (empty without one).
const interval = (iv) => (Array.isArray(iv) ? `, 95% interval ${pct(iv[0])}–${pct(iv[1])}` : "");

// After training, the live view moves to the new model and says so.
async function switchToRun(ev) {
  const wasLive = !!S.live;
  await loadRuns(ev.run);
  if ($("live-model").value !== String(ev.run)) return;
  // The bars left from the preview are not this model's scores.
  clearBars();
  // Live restarts on the new model first: starting it re-checks the model and would hide a
  // message shown before.
  if (wasLive) startLive();
  const m = $("live-msg");
  m.textContent = `Now showing the trained model: run ${ev.run} (${heldOut(ev.best_val_top1, errorOf(ev))}).` + (S.kind === "regression" ? "" : " The instant preview stays in the model list.");
  m.hidden = false; m.dataset.switched = String(ev.run);
}

const isSet = (v) => v !== null && v !== undefined;
const fixed = (v) => (isSet(v) ? v.toFixed(4) : "–");

// The chart of the epochs so far, and its text alternative: a one-line summary as the canvas's
// label and a table of every epoch's figures (for screen readers; hidden from sight).
function drawChart() {
  const pts = S.chart;
  const reg = pts.some((p) => isSet(p.val_error_px));
  drawChartCanvas(pts, reg);
  const c = $("train-chart"), last = pts[pts.length - 1];
  c.setAttribute("aria-label", last
    ? `Training chart, epoch ${last.epoch} of ${Math.max(S.totalEpochs, pts.length)}: train loss ${fixed(last.train_loss)}, held-out loss ${fixed(last.val_loss)}, ${heldOut(last.val_top1, last.val_error_px)}.`
    : "Training chart: no epochs yet.");
  $("train-chart-right").textContent = reg ? "held-out error" : "held-out top-1";
  const body = $("train-chart-rows");
  body.innerHTML = "";
  for (const p of pts) {
    const tr = document.createElement("tr");
    tr.innerHTML = `<th scope="row">${p.epoch}</th><td>${fixed(p.train_loss)}</td><td>${fixed(p.val_loss)}</td><td>${reg ? pxs(p.val_error_px) : pct(p.val_top1)}</td>`;
    body.appendChild(tr);
  }
}

function drawChartCanvas(pts, reg) {
  const c = $("train-chart"), g = c.getContext("2d");
  const W = c.width, H = c.height, L = 34, R = 34, T = 10, B = 20;
  g.clearRect(0, 0, W, H);
  g.font = "11px system-ui, sans-serif";
  g.strokeStyle = "#d8dce1"; g.strokeRect(L, T, W - L - R, H - T - B);
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
