// Collecting images: the task's categories, capture from the camera, points on the frame
// (regression), thumbnails and their point editor, file upload and folder import.

import { api, postJpegJson } from "./api.js";
import { arrowStep, clickToPixel, grabBlob, grabShown, pictureRect, shownMedia, updateCaptureButton, updatePointHint } from "./camera.js";
import { clearBars, drawOverlay, loadRuns, scheduleInstant } from "./live.js";
import { $, S, categoryIndex, catUrl, colourOf, enc, inView, setCount, show, taskUrl, viewBox } from "./state.js";

// ------------------------------------------------------------------ task and categories

// Shows what the selected task predicts and switches the page between capture (classification)
// and click-to-label (regression).
export function setKind(kind) {
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
  if (!reg) S.keyPoint = null;
  updatePointHint();
  drawOverlay(); // a regression task marks the model's view on the frame
}

// Draws the selected task's categories (buttons: Enter or a click selects one, the arrow keys
// the next or previous) and the selected category's thumbnails.
export async function loadTask() {
  const ul = $("categories");
  const hadFocus = ul.contains(document.activeElement);
  ul.innerHTML = "";
  $("thumbs").innerHTML = "";
  closeEditor();
  if (!S.task) { setKind("classification"); $("task-kind-badge").hidden = true; updateCaptureButton(); return; }
  const t = await api("GET", taskUrl());
  setKind(t.kind || "classification");
  if (!t.categories.some((c) => c.name === S.category)) {
    S.category = t.categories.length ? t.categories[0].name : "";
  }
  ul.innerHTML = "";
  for (const c of t.categories) {
    const li = document.createElement("li");
    const selected = c.name === S.category;
    li.className = "category" + (selected ? " selected" : "");
    li.dataset.name = c.name;
    const name = document.createElement("button");
    name.type = "button";
    name.className = "name"; name.textContent = c.name; name.title = "select";
    name.setAttribute("aria-pressed", String(selected));
    name.onclick = () => selectCategory(c.name);
    name.onkeydown = (e) => categoryKey(e, c.name, t.categories.map((x) => x.name));
    const count = document.createElement("span");
    count.className = "count"; count.textContent = c.count;
    count.setAttribute("aria-label", `${c.count} images`);
    // Each category has its own record button: hold it to capture into that category (a
    // burst), click or Enter/Space for one frame. Classification tasks only.
    const rec = document.createElement("button");
    rec.type = "button"; rec.className = "rec"; rec.textContent = "● Record";
    rec.hidden = S.kind === "regression";
    rec.setAttribute("aria-label", `record into ${c.name}: hold for a burst, Enter or Space for one frame`);
    rec.addEventListener("pointerdown", (e) => {
      if (e.button !== 0 || rec.disabled) return;
      if (rec.setPointerCapture) rec.setPointerCapture(e.pointerId);
      markSelected(c.name);
      startHold();
    });
    for (const ev of ["pointerup", "pointercancel", "lostpointercapture"]) rec.addEventListener(ev, stopHold);
    rec.addEventListener("keydown", (e) => {
      if ((e.key === "Enter" || e.key === " ") && !e.repeat) { e.preventDefault(); markSelected(c.name); captureOnce(); }
    });
    rec.addEventListener("contextmenu", (e) => e.preventDefault());
    const ren = document.createElement("button");
    ren.textContent = "Rename"; ren.className = "rename";
    ren.setAttribute("aria-label", `rename ${c.name}`);
    ren.onclick = () => renameCategory(c.name);
    const del = document.createElement("button");
    del.textContent = "Delete"; del.className = "danger delete";
    del.setAttribute("aria-label", `delete ${c.name}`);
    del.onclick = () => deleteCategory(c.name);
    li.append(name, count, rec, ren, del);
    ul.appendChild(li);
  }
  // A choice made from the keyboard keeps the focus on the category now selected.
  if (hadFocus) {
    const sel = ul.querySelector("li.category.selected .name");
    if (sel) sel.focus();
  }
  updateCaptureButton();
  await loadThumbs();
}

function selectCategory(name) {
  S.category = name;
  loadTask();
}

// Selects a category without redrawing the list (a record button being held stays).
function markSelected(name) {
  if (S.category === name) return;
  S.category = name;
  for (const li of document.querySelectorAll("li.category")) {
    const on = li.dataset.name === name;
    li.classList.toggle("selected", on);
    li.querySelector(".name").setAttribute("aria-pressed", String(on));
  }
  updateCaptureButton();
  scheduleThumbs();
}

// Arrow keys move the selection through the categories (wrapping), Home and End to the ends.
function categoryKey(e, name, names) {
  const i = names.indexOf(name), n = names.length;
  const to = { ArrowDown: i + 1, ArrowRight: i + 1, ArrowUp: i - 1, ArrowLeft: i - 1, Home: 0, End: n - 1 }[e.key];
  if (to === undefined || !n) return;
  e.preventDefault();
  selectCategory(names[(to + n) % n]);
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

export async function addCategory() {
  const name = $("cat-name").value.trim();
  if (!S.task) { show("create a task first", "error"); return; }
  if (!name) { show("type the new category's name first", "error"); $("cat-name").focus(); return; }
  try { await api("POST", `${taskUrl()}/categories`, { name }); $("cat-name").value = ""; S.category = name; show(`added category "${name}"`); await loadTask(); await loadRuns(); scheduleInstant(0); }
  catch (e) { show(e.message, "error"); }
}

// ------------------------------------------------------------------ capture

let inflight = false;
let holdTimer = null, holdInterval = null;

export async function captureOnce() {
  if (!S.task || !S.category || inflight) return;
  inflight = true;
  const cat = S.category;
  try {
    let r;
    if (S.source === "device") {
      r = await api("POST", `${catUrl(cat)}/capture`);
    } else {
      r = await postJpegJson(`${catUrl(cat)}/images`, await grabBlob());
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

export function startHold() {
  stopHold();
  captureOnce();
  holdTimer = setTimeout(() => {
    const rate = Math.max(1, Math.min(30, Number($("capture-rate").value) || 5));
    $("capture").classList.add("holding");
    holdInterval = setInterval(captureOnce, 1000 / rate);
  }, 350);
}

export function stopHold() {
  clearTimeout(holdTimer); clearInterval(holdInterval);
  holdTimer = holdInterval = null;
  $("capture").classList.remove("holding");
}

// ------------------------------------------------------------------ points on the frame

let pointInflight = false;

// Regression: a click on the live frame saves that frame with the clicked point.
export function savePointClick(e) {
  if (S.kind !== "regression" || !S.task || pointInflight) return;
  if (!S.category) { show("add a category first, then click its point in the frame", "error"); return; }
  const el = e.currentTarget;
  const p = clickToPixel(el, e);
  if (!p) return;
  if (S.keyPoint) { S.keyPoint = null; updatePointHint(); drawOverlay(); }
  if (!refuseOutside(el, p)) savePoint(el, p);
}

// Regression, from the keyboard on the focused stage: the arrow keys place a point on the frame
// (starting at its centre; Shift: 10 px steps), Enter or Space saves the frame with it, Escape
// removes it.
export function stageKey(e) {
  if (S.kind !== "regression" || !S.task) return;
  const el = shownMedia(), pic = el && pictureRect(el);
  if (e.key === "Escape") { S.keyPoint = null; }
  else if (e.key === "Enter" || e.key === " ") {
    e.preventDefault();
    if (e.repeat || !S.keyPoint || !pic || pointInflight) return;
    if (!S.category) { show("add a category first, then place its point in the frame", "error"); return; }
    const p = { x: Math.min(S.keyPoint.x, pic.width - 1), y: Math.min(S.keyPoint.y, pic.height - 1) };
    if (!refuseOutside(el, p)) savePoint(el, p);
    return;
  } else {
    if (!pic || !e.key.startsWith("Arrow")) return;
    e.preventDefault();
    S.keyPoint = S.keyPoint
      ? arrowStep(e, S.keyPoint, pic)
      : { x: Math.floor(pic.width / 2), y: Math.floor(pic.height / 2) };
  }
  updatePointHint();
  drawOverlay();
}

// A point beside the model's view (the marked centre square) is refused on the spot, with the
// reason: the model never sees it. Returns true when refused.
function refuseOutside(el, p) {
  const w = el.naturalWidth || el.videoWidth, h = el.naturalHeight || el.videoHeight;
  if (!w || !h || inView(p, w, h)) return false;
  const v = viewBox(w, h);
  show(`point (${p.x}, ${p.y}) is outside the model's view: it sees only the centre square of the ${w}x${h} frame (x ${v.x}–${v.x + v.side}, y ${v.y}–${v.y + v.side}). Click inside the marked square.`, "error");
  $("stage").dataset.refused = `${p.x},${p.y}`;
  return true;
}

async function savePoint(el, p) {
  pointInflight = true;
  const cat = S.category;
  try {
    const blob = await grabShown(el);
    const data = await postJpegJson(`${catUrl(cat)}/points?x=${p.x}&y=${p.y}`, blob);
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

// ------------------------------------------------------------------ images

let thumbsTimer = null;
export function scheduleThumbs() {
  clearTimeout(thumbsTimer);
  thumbsTimer = setTimeout(loadThumbs, 400);
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
      // Regression: the point drawn over the thumbnail; a click (or Enter) opens it larger to
      // correct it.
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
      frame.tabIndex = 0;
      frame.setAttribute("role", "button");
      frame.setAttribute("aria-label", `${im.name}, point (${im.point[0]}, ${im.point[1]}): correct the point`);
      frame.onclick = () => openEditor(cat, im.name);
      frame.onkeydown = (e) => {
        if ((e.key === "Enter" || e.key === " ") && !e.repeat) { e.preventDefault(); openEditor(cat, im.name, true); }
      };
      shown = frame;
    }
    const del = document.createElement("button");
    del.textContent = "×"; del.title = "delete this image";
    del.setAttribute("aria-label", `delete ${im.name}`);
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

// ------------------------------------------------------------------ point editor

// The thumbnail editor: the image larger with its point; a click moves the point (the server
// renames the file to the new <x>_<y>_<uuid>.jpg). From the keyboard the arrow keys move a new
// point (Shift: 10 px) and Enter saves it; Escape closes the editor.
function openEditor(cat, name, focus) {
  const m = /^(\d+)_(\d+)_/.exec(name);
  if (!m) return;
  S.editor = { category: cat, name, x: Number(m[1]), y: Number(m[2]), next: null };
  const img = $("editor-img");
  img.onload = drawEditor;
  img.src = `${catUrl(cat)}/images/${enc(name)}`;
  $("point-editor").hidden = false;
  drawEditor();
  if (focus) $("editor-stage").focus();
}

export function closeEditor() {
  S.editor = null;
  $("point-editor").hidden = true;
  $("editor-img").removeAttribute("src");
}

function drawEditor() {
  const ed = S.editor, img = $("editor-img"), dot = $("editor-dot");
  if (!ed) return;
  const at = ed.next || ed;
  $("editor-info").textContent = `${ed.name} · point (${ed.x}, ${ed.y})` + (ed.next ? ` · new point (${at.x}, ${at.y}): Enter saves it` : "");
  $("point-editor").dataset.name = ed.name;
  if (!img.naturalWidth) { dot.hidden = true; return; }
  dot.hidden = false;
  dot.style.left = (100 * at.x / img.naturalWidth).toFixed(3) + "%";
  dot.style.top = (100 * at.y / img.naturalHeight).toFixed(3) + "%";
  dot.style.background = colourOf(categoryIndex(ed.category));
}

export function editorClick(e) {
  const ed = S.editor;
  if (!ed) return;
  const p = clickToPixel($("editor-img"), e);
  if (!p) return;
  movePoint(ed, p);
}

export function editorKey(e) {
  const ed = S.editor, img = $("editor-img");
  if (!ed) return;
  if (e.key === "Escape") { e.preventDefault(); closeEditor(); return; }
  if (e.key === "Enter" || e.key === " ") {
    e.preventDefault();
    if (ed.next && !e.repeat) movePoint(ed, ed.next);
    return;
  }
  if (!img.naturalWidth) return;
  const p = arrowStep(e, ed.next || ed, { width: img.naturalWidth, height: img.naturalHeight });
  if (!p) return;
  e.preventDefault();
  ed.next = p;
  drawEditor();
}

async function movePoint(ed, p) {
  try {
    const r = await api("PUT", `${catUrl(ed.category)}/images/${enc(ed.name)}/point`, { x: p.x, y: p.y });
    Object.assign(ed, { name: r.name, x: r.point[0], y: r.point[1], next: null });
    drawEditor();
    setCount(ed.category, r.count);
    show(`moved the point to (${r.point[0]}, ${r.point[1]}): ${r.name}`);
    await loadThumbs();
  } catch (err) { show("move point: " + err.message, "error"); }
}

// ------------------------------------------------------------------ upload and import

export async function uploadFiles(files) {
  if (!S.task || !S.category) { show("choose a task and a category first", "error"); return; }
  const all = Array.from(files);
  const list = all.filter((f) => f.size > 0);
  const empty = all.filter((f) => f.size === 0).map((f) => f.name);
  const skipped = empty.length ? ` (skipped, empty: ${empty.join(", ")})` : "";
  if (!list.length) { show(empty.length ? `nothing added: ${empty.join(", ")} ${empty.length > 1 ? "are empty files" : "is an empty file"} (0 bytes)` : "no file chosen", "error"); return; }
  const fd = new FormData();
  for (const f of list) fd.append("file", f, f.name);
  try {
    const r = await api("POST", `${catUrl()}/images`, fd);
    setCount(S.category, r.count);
    show(`added ${r.saved.length} image(s) to "${S.category}"${skipped}`, empty.length ? "warn" : undefined);
    scheduleInstant();
    await loadThumbs();
  } catch (e) { show("upload: " + e.message, "error"); }
}

export async function importFolder() {
  const path = $("import-path").value.trim();
  if (!S.task || !S.category) { show("choose a task and a category first", "error"); return; }
  if (!path) { show("type the folder's path on the studio's machine first", "error"); $("import-path").focus(); return; }
  try {
    const r = await api("POST", `${catUrl()}/import`, { path });
    setCount(S.category, r.count);
    show(`imported ${r.imported} image(s)` + (r.skipped.length ? `, skipped ${r.skipped.length}: ` + r.skipped.map((s) => s.reason).join("; ") : ""));
    scheduleInstant();
    await loadThumbs();
  } catch (e) { show("import: " + e.message, "error"); }
}
