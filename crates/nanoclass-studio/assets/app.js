// nanoclass studio page: plain JavaScript modules, no build step. Talks to the JSON API under
// /api. This module picks the task and wires the page; the rest lives in js/:
//   api.js      requests to the JSON API
//   state.js    the page's state (window.studio), URLs and shared helpers
//   camera.js   this browser's camera or the device camera, the frame on show
//   collect.js  categories, capture, points, thumbnails, upload and import
//   train.js    the training form, its progress, chart and evaluation
//   live.js     the model list, live scores and the instant preview
// Imports go one way: api, state <- camera <- live <- collect, train <- this module.

import { api } from "./js/api.js";
import { refreshSource, setDeviceSource, useSource } from "./js/camera.js";
import { addCategory, captureOnce, closeEditor, editorClick, editorKey, importFolder, loadTask, savePointClick, scheduleThumbs, stageKey, startHold, stopHold, uploadFiles } from "./js/collect.js";
import { checkModel, clearBars, drawOverlay, loadRuns, scheduleInstant, startLive, stopLive, updateDownload } from "./js/live.js";
import { $, S, events, show, taskUrl } from "./js/state.js";
import { followTraining, modeChanged, resetTrainForm, scheduleEstimate, startTraining, stopTraining, updateEstimate } from "./js/train.js";

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
  // Nothing of the task left behind stays on screen: its messages (which may name server
  // paths), its live model choice (run numbers are per task), its training settings.
  show("");
  $("live-model").innerHTML = "";
  $("live-msg").hidden = true; delete $("live-msg").dataset.switched;
  S.task = name; S.category = "";
  S.instant = null; S.instantStarted = false; S.userStopped = false;
  localStorage.setItem("nanoclass.task", name);
  await loadTask();
  resetTrainForm(); // after loadTask: the defaults depend on the task's kind
  await loadRuns();
  await followTraining(false);
  scheduleInstant(0);
}

async function init() {
  const info = await api("GET", "/api/info");
  const arch = $("train-arch");
  for (const a of info.backbones) { const o = document.createElement("option"); o.value = o.textContent = a; arch.appendChild(o); }
  arch.value = "efficientnet_lite0";
  // The device choice appears only in a build that can train on a GPU.
  const dev = $("train-device");
  for (const d of info.devices) { const o = document.createElement("option"); o.value = o.textContent = d; dev.appendChild(o); }
  dev.value = info.default_device;
  $("train-device-label").hidden = info.devices.length < 2;
  // Half precision is a GPU's choice: shown once a GPU is chosen.
  const precisionShown = () => { $("train-precision-label").hidden = $("train-device-label").hidden || dev.value === "cpu"; };
  dev.addEventListener("change", precisionShown);
  precisionShown();
  $("train-mode").onchange = modeChanged;
  // Any other setting of the form changes the expected time.
  for (const id of ["train-arch", "train-device", "train-precision", "train-epochs", "train-batch", "train-crop-min", "train-jitter", "train-flip"]) $(id).addEventListener("change", updateEstimate);

  $("task-create").onclick = async () => {
    const name = $("task-name").value.trim();
    if (!name) { show("type the new task's name first", "error"); $("task-name").focus(); return; }
    const kind = $("task-kind").value;
    try { await api("POST", "/api/tasks", { name, kind }); $("task-name").value = ""; await loadTasks(name); show(`created ${kind} task "${name}"`); }
    catch (e) { show(e.message, "error"); }
  };
  $("task-select").onchange = (e) => selectTask(e.target.value);
  $("task-delete").onclick = async () => {
    if (!S.task || !confirm(`Delete task "${S.task}"? (It is moved to the data folder's .trash.)`)) return;
    try { await api("DELETE", taskUrl()); S.task = ""; await loadTasks(""); } catch (e) { show(e.message, "error"); }
  };
  $("cat-add").onclick = addCategory;
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

  // Regression: a click on the live frame (or the arrow keys and Enter on the focused stage)
  // saves it with the point; a click on the enlarged thumbnail (or the arrow keys and Enter)
  // moves its point.
  $("video").addEventListener("click", savePointClick);
  $("device-img").addEventListener("click", savePointClick);
  $("stage").addEventListener("keydown", stageKey);
  $("editor-img").addEventListener("click", editorClick);
  $("editor-stage").addEventListener("keydown", editorKey);
  $("editor-close").onclick = closeEditor;
  window.addEventListener("resize", drawOverlay);
  // The marked view follows the frame's size.
  $("device-img").addEventListener("load", drawOverlay);
  for (const ev of ["loadedmetadata", "resize"]) $("video").addEventListener(ev, drawOverlay);
  events.addEventListener("images", scheduleThumbs);
  events.addEventListener("images", scheduleEstimate);

  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); uploadFiles(e.dataTransfer.files); });
  $("file-input").onchange = (e) => { uploadFiles(e.target.files); e.target.value = ""; };
  $("import").onclick = importFolder;

  $("train-start").onclick = startTraining;
  $("train-stop").onclick = stopTraining;

  $("live-model").onchange = () => { stopLive(); clearBars(); checkModel(); };
  $("export-format").onchange = updateDownload;
  $("live-start").onclick = () => { if (S.live) { S.userStopped = true; stopLive(); } else { S.userStopped = false; startLive(); } };
  for (const id of ["live-smoothing", "live-threshold"]) {
    $(id).oninput = () => { $(id + "-v").textContent = $(id).value; };
    $(id).onchange = () => { if (S.live) startLive(); };
  }
  $("live-unknown").onchange = () => { if (S.live) startLive(); };

  const st = await refreshSource();
  await loadTasks(localStorage.getItem("nanoclass.task") || undefined);
  await useSource(st.uri ? "device" : "browser");
}

window.addEventListener("error", (e) => show("page error: " + e.message, "error"));
init().catch((e) => show(e.message, "error"));
