// The page's shared state, the task's URLs and small helpers every module uses.

export const $ = (id) => document.getElementById(id);
export const enc = encodeURIComponent;

export const S = {
  task: "", category: "", source: "browser", stream: null, deviceSource: null,
  runs: [], live: null, liveTimes: [], job: null, chart: [], totalEpochs: 0,
  // Timings read by people and by the end-to-end test (milliseconds, performance.now()).
  times: { trainClicked: null, firstEpoch: null, done: null },
  fps: 0, lastScores: null, liveCount: 0, captures: 0,
  // The browser camera's presented frames and their rate (camera.js countFrames).
  cam: { presented: 0, times: [], fps: 0 },
  // Instant preview: the task's status (GET .../instant), whether it was started for this task.
  instant: null, instantStarted: false, userStopped: false,
  // Each refit of the instant model seen by the page: {images, embedded, embed_ms, update_ms, fit_ms}.
  instantUpdates: [],
  // The task's kind ("classification" | "regression"); regression: points saved by clicking
  // the frame ({name, x, y, count} each), the thumbnail editor's image ({name, x, y}).
  kind: "classification", pointsSaved: [], editor: null,
  // Regression: the point placed with the arrow keys on the focused camera stage ({x, y},
  // pixels of the frame on show); null until an arrow key is pressed there.
  keyPoint: null,
};
window.studio = S;

// Page-wide notices between modules that do not import each other: "images" (a category's
// images changed: its thumbnails are reloaded).
export const events = new EventTarget();
export const notify = (name, detail) => events.dispatchEvent(new CustomEvent(name, { detail }));

export function show(text, kind) {
  const m = $("msg");
  m.textContent = text || "";
  m.className = "msg" + (kind ? " " + kind : "");
}

export const taskUrl = () => `/api/tasks/${enc(S.task)}`;
export const catUrl = (c) => `${taskUrl()}/categories/${enc(c || S.category)}`;

const COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#fabed4", "#469990"];
export const colourOf = (i) => COLOURS[i % COLOURS.length];

export function esc(s) { const d = document.createElement("div"); d.textContent = s; return d.innerHTML; }

export const pct = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%");
export const pxs = (x) => (x === null || x === undefined ? "–" : x.toFixed(1) + " px");
// The held-out figure of an epoch or a run: top-1 (classification) or mean point error.
export const heldOut = (top1, errorPx) => (errorPx !== null && errorPx !== undefined ? `held-out error ${pxs(errorPx)}` : `held-out top-1 ${pct(top1)}`);

// The image count shown beside a category.
export function setCount(category, count) {
  const li = document.querySelector(`li.category[data-name="${CSS.escape(category)}"] .count`);
  if (li) li.textContent = count;
}

// Index of a category in label order (the order the page lists them).
export function categoryIndex(name) {
  const names = [...document.querySelectorAll("li.category")].map((li) => li.dataset.name);
  return Math.max(0, names.indexOf(name));
}

// The part of a width x height frame a point model sees: its centre square (the regression
// eval preset resizes the shorter side to the input size and keeps the centre square; the
// server applies the same rule, nanoclass::eval::regression::view_box).
export function viewBox(w, h) {
  const side = Math.min(w, h);
  return { x: Math.round((w - side) / 2), y: Math.round((h - side) / 2), side };
}

// Whether pixel (x, y) of a width x height frame lies in the model's view (its centre).
export function inView(p, w, h) {
  const v = viewBox(w, h);
  const x = p.x + 0.5, y = p.y + 0.5;
  return x >= v.x && x <= v.x + v.side && y >= v.y && y <= v.y + v.side;
}
