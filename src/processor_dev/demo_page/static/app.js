// Race control: a plain client of the processor's live WebSocket protocol (SPEC §5 plus the
// race-control frames; docs/race-control-page.md). Written as the reference for SPA
// developers: no framework, no build step, nothing fetched but this origin and the live server.
//
//  1. GET /scenario.json: the stage geometry and entries (a real SPA reads these from Directus
//     REST) and where the live server listens.
//  2. Open ws://<this host>:<live port>/live. The browser sends the Directus session cookie with
//     the upgrade (cookies are per host, not per port); the server checks our Origin and asks
//     Directus who we are. Browsers cannot set an Authorization header on a WebSocket.
//  3. Send {"type":"subscribe","topic":"event:<uuid>"}. The answer, `subscribed`, carries the
//     last position of every car (`snapshot`) and, from servers with the race-control frames,
//     the current `results` and open `alerts`. From then on: `position`, `timing`, `results`,
//     `alert`, `violation` frames.
//  4. On any close, reconnect with exponential backoff and jitter; every (re)connection starts
//     again at step 2 and the `subscribed` frame replaces what we knew (no gap to repair).
//  5. History (docs/history.md): after the first `subscribed`, GET /live/history on the same
//     port (the same cookie, `credentials: "include"`, CORS for our origin) brings the trails
//     back; clicking a car draws its whole track on the stage so far (again on a click: off).
"use strict";

const TRAIL_POINTS = 40;            // positions kept per car for its trail
const TRAIL_HISTORY_S = 120;        // fix time the trails are rebuilt from after a (re)load
const TRACK_POINTS = 5000;          // at most this many points for a selected car's track
const BACKOFF_FIRST_MS = 500;       // first reconnect delay ...
const BACKOFF_MAX_MS = 15000;       // ... doubling up to this
const RESULTS_POLL_MS = 2000;       // fallback polling of /results.json (see below)
const LOG_LINES = 12;
const METRES_PER_DEGREE = 111320;   // the projection: equirectangular around the route's start
const SVG = "http://www.w3.org/2000/svg";

const state = {
  scenario: null,
  entryByDevice: new Map(),   // device_id (IMEI) -> entry {id, number, class}
  entryById: new Map(),
  cars: new Map(),            // device_id -> {entry, trail: [[x, y, ts]...], node, trailNode}
  alerts: new Map(),          // alert id -> alert (open ones only)
  results: [],
  serverSendsResults: false,  // true once a `subscribed` frame carried `results`
  attempt: 0,                 // consecutive failed connections (backoff exponent)
  lastFix: null,
  historyLoaded: false,       // trails rebuilt from /live/history once per page load
  selected: null,             // device_id whose whole track is drawn
};

// ---------------------------------------------------------------------------------------------
// Connection state: shown in the header and exposed as <body data-connection> for tests.

function setConnection(kind, detail) {
  document.body.dataset.connection = kind;
  document.getElementById("connection-text").textContent = detail ? `${kind} · ${detail}` : kind;
}

// ---------------------------------------------------------------------------------------------
// Map: project lat/lon to metres (x east, y south) so the SVG is drawn to scale.

let origin = [0, 0];
let unit = 1;  // metres per "marker unit": car and label sizes follow the stage's extent

function project([lat, lon]) {
  const x = (lon - origin[1]) * METRES_PER_DEGREE * Math.cos(origin[0] * Math.PI / 180);
  const y = -(lat - origin[0]) * METRES_PER_DEGREE;
  return [x, y];
}

function el(name, attrs, parent) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (parent) parent.appendChild(node);
  return node;
}

function points(list) {
  return list.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" ");
}

function drawStage(scenario) {
  const svg = document.getElementById("stage");
  origin = scenario.route[0];
  const route = scenario.route.map(project);
  const all = route.slice();
  for (const c of scenario.controls) {
    if (c.line) all.push(...c.line.map(project));
    if (c.center) all.push(project(c.center));
  }
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  const span = Math.max(Math.max(...xs) - Math.min(...xs), Math.max(...ys) - Math.min(...ys));
  const margin = Math.max(80, span * 0.06);
  const [x0, y0] = [Math.min(...xs) - margin, Math.min(...ys) - margin];
  const [w, h] = [Math.max(...xs) - x0 + margin, Math.max(...ys) - y0 + margin];
  svg.setAttribute("viewBox", `${x0} ${y0} ${w} ${h}`);
  unit = Math.max(w, h) / 220;
  svg.style.setProperty("--unit", unit);

  const ground = el("g", { class: "ground" }, svg);
  for (const zone of scenario.zones || []) {
    el("polyline", { class: "zone", points: points(zone.points.map(project)),
                     "stroke-width": unit * 4 }, ground);
    // the limit, written beside the middle of the zone (control labels sit to the right)
    const [mx, my] = project(zone.points[Math.floor(zone.points.length / 2)]);
    text(ground, [mx - unit * 5, my], `${zone.max_speed_kmh} km/h`, "zone-label", unit * 3.2);
  }
  el("polyline", { class: "route-casing", points: points(route), "stroke-width": unit * 2.2 }, ground);
  el("polyline", { class: "route", points: points(route), "stroke-width": unit * 1.1 }, ground);
  for (const c of scenario.controls) {
    const label = controlLabel(c);
    if (c.line) {  // start, finish and checkpoint lines: drawn at their true length
      const [a, b] = c.line.map(project);
      el("line", { class: `control ${c.kind}`, x1: a[0], y1: a[1], x2: b[0], y2: b[1],
                   "stroke-width": unit * 0.9 }, ground);
      text(ground, [a[0] + unit, a[1] - unit], label, `control-label ${c.kind}`, unit * 3.4);
    } else if (c.center) {  // waypoints: the validation radius, to scale
      const [x, y] = project(c.center);
      el("circle", { class: "control waypoint", cx: x, cy: y, r: c.validate_radius_m,
                     "stroke-width": unit * 0.5 }, ground);
      text(ground, [x + c.validate_radius_m + unit, y], label, "control-label waypoint", unit * 3.4);
    }
  }
  el("g", { id: "trails" }, svg);
  el("g", { id: "cars" }, svg);
  drawScale(w, h);
  window.addEventListener("resize", () => drawScale(w, h));
}

function controlLabel(c) {  // START, WP1, CP2, ..., FINISH (numbered from the start)
  if (c.kind === "start" || c.kind === "finish") return c.kind.toUpperCase();
  return `${c.kind === "waypoint" ? "WP" : "CP"}${c.ordinal - 1}`;
}

function text(parent, [x, y], content, cls, size) {
  const node = el("text", { x, y, class: cls, "font-size": size }, parent);
  node.textContent = content;
  return node;
}

function drawScale(w, h) {
  // A round length near 150 px on screen. The SVG keeps its aspect ratio ("meet"), so one
  // metre is as many pixels as the tighter of the two directions allows.
  const svg = document.getElementById("stage");
  const box = svg.getBoundingClientRect();
  const pxPerMetre = Math.min(box.width / w, box.height / h);
  const raw = 150 / pxPerMetre, step = 10 ** Math.floor(Math.log10(raw));
  const metres = [1, 2, 5, 10].map((k) => k * step).filter((m) => m <= raw).pop() || step;
  const scale = document.getElementById("scale");
  scale.style.setProperty("--bar", `${Math.round(metres * pxPerMetre)}px`);
  scale.textContent = metres >= 1000 ? `${metres / 1000} km` : `${metres} m`;
}

// ---------------------------------------------------------------------------------------------
// Cars: one marker (number) and one trail per device.

function carOf(deviceId) {
  const entry = state.entryByDevice.get(deviceId);
  if (!entry) return null;  // a device of this event that is not an entry of the drawn stage
  let car = state.cars.get(deviceId);
  if (!car) {
    const trailNode = el("polyline", { class: "trail", "stroke-width": unit * 1.2 },
                         document.getElementById("trails"));
    const node = el("g", { class: "car", "data-number": entry.number, "data-entry": entry.id,
                           "data-device": deviceId }, document.getElementById("cars"));
    el("circle", { class: "halo", r: unit * 4.2 }, node);
    el("circle", { class: "body", r: unit * 2.8, "stroke-width": unit * 0.5 }, node);
    text(node, [0, unit * 1.1], entry.number, "car-number", unit * 2.9);
    node.addEventListener("click", () => selectCar(deviceId));
    car = { entry, trail: [], node, trailNode, ts: "" };
    state.cars.set(deviceId, car);
  }
  return car;
}

function onPosition(p) {
  const car = carOf(p.device_id);
  if (!car) return;
  if (p.ts < car.ts) return;  // an older fix delivered late: keep the newest on the map
  car.ts = p.ts;
  const [x, y] = project([p.latitude, p.longitude]);
  car.trail.push([x, y, p.ts]);
  if (car.trail.length > TRAIL_POINTS) car.trail.shift();
  car.trailNode.setAttribute("points", points(car.trail));
  car.node.setAttribute("transform", `translate(${x.toFixed(1)},${y.toFixed(1)})`);
  car.node.dataset.speed = Math.round(p.speed);
  if (!state.lastFix || p.ts > state.lastFix) {
    state.lastFix = p.ts;
    document.getElementById("clock").textContent = p.ts.slice(11, 19) + "Z";
  }
}

// ---------------------------------------------------------------------------------------------
// History: GET /live/history on the live server's port, with the session cookie.

function historyUrl(params) {
  const { port } = state.scenario.live;
  const query = new URLSearchParams({ event: state.scenario.event.id, ...params });
  return `http://${location.hostname}:${port}/live/history?${query}`;
}

function fixWindow(fromIso) {  // [from, to] for the fixes seen so far, at most 23 h long
  const latest = Math.max(Date.now(), state.lastFix ? Date.parse(state.lastFix) : 0) + 1000;
  const from = Math.max(Date.parse(fromIso), latest - 23 * 3600 * 1000);
  return { from: new Date(from).toISOString(), to: new Date(latest).toISOString() };
}

async function loadHistory(params) {
  try {
    const response = await fetch(historyUrl(params), { credentials: "include" });
    if (response.ok) return await response.json();
    const problem = await response.json().catch(() => ({}));
    document.body.dataset.historyError = `${response.status} ${problem.message || ""}`;
    log("alert", `history: ${response.status} ${problem.message || ""}`, state.lastFix);
  } catch (error) {  // the live server is away: the trails simply start from now
    document.body.dataset.historyError = String(error);
  }
  return null;
}

function coordinatesOf(feature) {
  const g = feature.geometry;
  return g.type === "LineString" ? g.coordinates : [g.coordinates];
}

// The trails of the last TRAIL_HISTORY_S of fix time, before what arrived live meanwhile.
async function restoreTrails() {
  state.historyLoaded = true;
  const latest = state.lastFix ? Date.parse(state.lastFix) : Date.now();
  const from = new Date(latest - TRAIL_HISTORY_S * 1000).toISOString();
  const history = await loadHistory({ ...fixWindow(from), max_points: 20000 });
  if (!history) return;
  let restored = 0;
  for (const feature of history.features) {
    const car = carOf(feature.properties.device_id);
    if (!car) continue;
    const times = feature.properties.times;
    const earliest = car.trail.length ? car.trail[0][2] : "~";
    const older = coordinatesOf(feature)
      .map(([lon, lat], i) => [...project([lat, lon]), times[i]])
      .filter((point) => point[2] < earliest);
    car.trail = [...older, ...car.trail].slice(-TRAIL_POINTS);
    car.trailNode.setAttribute("points", points(car.trail));
    car.trailNode.dataset.history = older.length;
    restored += older.length;
  }
  document.body.dataset.history = restored;
}

// A click on a car: its whole track on the stage so far (a click on the same car: off).
async function selectCar(deviceId) {
  const layer = document.getElementById("trails");
  document.getElementById("selected-track")?.remove();
  for (const node of document.querySelectorAll("#cars g.car.selected")) node.classList.remove("selected");
  if (state.selected === deviceId) { state.selected = null; return; }
  state.selected = deviceId;
  const car = state.cars.get(deviceId);
  car?.node.classList.add("selected");
  const history = await loadHistory({ ...fixWindow(state.scenario.stage.opens_at), device: deviceId,
                                      max_points: TRACK_POINTS });
  if (!history || state.selected !== deviceId) return;
  const feature = history.features[0];
  const track = feature ? coordinatesOf(feature).map(([lon, lat]) => project([lat, lon])) : [];
  const node = el("polyline", { id: "selected-track", class: "selected-track", points: points(track),
                                "stroke-width": unit * 1.6, "data-device": deviceId,
                                "data-points": track.length,
                                "data-fixes": feature ? feature.properties.fixes : 0 }, layer);
  layer.prepend(node);  // under the trails and cars
  const simplified = history.simplification ? " (simplified)" : "";
  log("pass", `car ${car ? car.entry.number : deviceId}: ${track.length} points of its track${simplified}`,
      state.lastFix);
}

// ---------------------------------------------------------------------------------------------
// Results: the whole table per `results` frame (at most once a second per stage).

function fmtDuration(ms, signed) {
  if (ms === null || ms === undefined) return "";
  const sign = signed ? "+" : "";
  const tenths = Math.floor(ms / 100) % 10, s = Math.floor(ms / 1000);
  const hh = Math.floor(s / 3600), mm = Math.floor(s / 60) % 60, ss = s % 60;
  const two = (n) => String(n).padStart(2, "0");
  return hh ? `${sign}${hh}:${two(mm)}:${two(ss)}.${tenths}` : `${sign}${mm}:${two(ss)}.${tenths}`;
}

function renderResults(rows, source) {
  state.results = rows;
  document.getElementById("results-source").textContent = source;
  const alerted = new Set([...state.alerts.values()].map((a) => a.entry_id));
  const body = document.querySelector("#results tbody");
  body.replaceChildren(...rows.map((r) => {
    const tr = document.createElement("tr");
    tr.dataset.entry = r.entry_id;
    tr.className = `${r.status}${alerted.has(r.entry_id) ? " alerted" : ""}`;
    const total = state.scenario.controls.length;
    const controls = `${r.controls_passed ?? 0}/${total}${r.controls_missed ? ` · ${r.controls_missed} missed` : ""}`;
    // A running car has no elapsed time yet: show the time on stage so far, by the clock of
    // the latest fix (not this computer's clock, which may be off), marked as running.
    const onStage = r.started_at && state.lastFix ? Date.parse(state.lastFix) - Date.parse(r.started_at) : null;
    const cells = [
      r.status === "finished" ? r.position : "", r.number, r.class, controls,
      r.status === "finished" ? fmtDuration(r.elapsed_ms) : `▸ ${onStage > 0 ? fmtDuration(onStage) : "running"}`,
      r.penalty_ms ? fmtDuration(r.penalty_ms, true) : "",
      fmtDuration(r.total_ms), r.position === 1 ? "" : fmtDuration(r.gap_ms, true),
    ];
    cells.forEach((value, i) => {
      const td = document.createElement("td");
      td.textContent = value ?? "";
      if (i >= 4) td.className = "num";
      if (i === 5 && r.penalty_ms) td.classList.add("penalty");
      tr.appendChild(td);
    });
    return tr;
  }));
}

function resultsOf(list) {  // `subscribed.results` holds every stage of the event
  const mine = (list || []).find((s) => s.stage_id === state.scenario.stage.id);
  return mine ? mine.results : [];
}

// Fallback: a live server without the race-control frames sends `subscribed` without
// `results`; then the page polls the demo's /results.json (stage_results) instead. As soon as
// a `subscribed` frame carries `results`, polling stops for good.
async function pollResults() {
  if (state.serverSendsResults) return;
  try {
    const response = await fetch(`/results.json?stage=${state.scenario.stage.id}`);
    if (response.ok && !state.serverSendsResults) {
      renderResults((await response.json()).results, "polled");
    }
  } catch (_) { /* the demo is stopping; the next poll tries again */ }
}

// ---------------------------------------------------------------------------------------------
// Alerts, passes and violations.

function onAlert(alert) {
  if (alert.cleared_at) state.alerts.delete(alert.id); else state.alerts.set(alert.id, alert);
  renderAlerts();
  if (!alert.cleared_at) {
    log("alert", `#${alert.number} ${alert.kind.replace("_", " ")}`, alert.raised_at);
  }
}

function renderAlerts() {
  const open = [...state.alerts.values()].sort((a, b) => (a.raised_at < b.raised_at ? -1 : 1));
  document.getElementById("alert-count").textContent = open.length;
  document.getElementById("alert-count").classList.toggle("hot", open.length > 0);
  const list = document.getElementById("alerts");
  if (!open.length) {
    list.innerHTML = '<li class="none">none</li>';
  } else {
    list.replaceChildren(...open.map((a) => {
      const li = document.createElement("li");
      li.className = `alert ${a.kind}`;
      li.textContent = `#${a.number} ${a.kind.replace("_", " ")} since ${a.raised_at.slice(11, 19)}Z`;
      return li;
    }));
  }
  const entries = new Set(open.map((a) => a.entry_id));
  for (const car of state.cars.values()) car.node.classList.toggle("alerted", entries.has(car.entry.id));
  for (const tr of document.querySelectorAll("#results tbody tr")) {
    tr.classList.toggle("alerted", entries.has(tr.dataset.entry));
  }
}

function onTiming(message) {
  const key = message.record || message.removed;
  const id = `pass-${key.entry_id}-${key.control_id}`;
  if (message.removed) {  // a late fix undid this pass: strike it through
    const li = document.getElementById(id);
    if (li) li.classList.add("removed");
    return;
  }
  // A pass is sent again when a late fix moves it: one line per (entry, control), updated.
  const r = message.record, entry = state.entryById.get(r.entry_id);
  const control = state.scenario.controls.find((c) => c.id === r.control_id);
  const where = control ? controlLabel(control) : `control ${r.control_ordinal}`;
  log("pass", `#${entry ? entry.number : "?"} ${where} ${Math.round(r.speed_kmh ?? 0)} km/h`,
      r.passed_at, id);
}

function onViolation(v) {
  log("violation", `#${v.number} +${Math.round(v.excess_kmh)} km/h, ${v.penalty_s} s`, v.started_at);
}

function log(kind, message, ts, id) {
  const list = document.getElementById("log");
  let li = id ? document.getElementById(id) : null;
  if (!li) {
    li = document.createElement("li");
    if (id) li.id = id;
    list.prepend(li);
  }
  li.className = kind;
  li.textContent = `${(ts || "").slice(11, 22)}Z ${message}`;
  while (list.children.length > LOG_LINES) list.lastChild.remove();
}

// ---------------------------------------------------------------------------------------------
// The WebSocket client.

function connect() {
  const { port, path } = state.scenario.live;
  const topic = `event:${state.scenario.event.id}`;
  // Same host name as this page: the session cookie is only sent to that host.
  const ws = new WebSocket(`ws://${location.hostname}:${port}${path}`);
  setConnection(state.attempt ? "reconnecting" : "connecting");

  ws.onopen = () => ws.send(JSON.stringify({ type: "subscribe", topic }));

  ws.onmessage = (event) => {
    const m = JSON.parse(event.data);
    switch (m.type) {
      case "subscribed":
        state.attempt = 0;  // only a subscription that worked resets the backoff
        setConnection("live");
        m.snapshot.forEach(onPosition);
        if (!state.historyLoaded) restoreTrails();
        if ("results" in m) {  // a server with the race-control frames
          state.serverSendsResults = true;
          renderResults(resultsOf(m.results), "live");
        }
        if ("alerts" in m) {
          state.alerts = new Map(m.alerts.map((a) => [a.id, a]));
          renderAlerts();
        }
        break;
      case "position": onPosition(m.position); break;
      case "results":
        if (m.stage_id === state.scenario.stage.id) {
          state.serverSendsResults = true;
          renderResults(m.results, "live");
        }
        break;
      case "timing": onTiming(m); break;
      case "alert": onAlert(m.alert); break;
      case "violation": onViolation(m.violation); break;
      case "error":
        // forbidden: Directus says no (retrying will not help until someone changes that);
        // unavailable: Directus or the database could not answer; the close/reconnect path
        // below covers it when the server gives up on us.
        setConnection(m.code === "forbidden" ? "forbidden" : "error", m.message);
        if (m.code === "unavailable") setTimeout(() => ws.send(JSON.stringify({ type: "subscribe", topic })), backoff());
        break;
      default: break;  // unknown frames are ignored: the protocol only ever adds
    }
  };

  ws.onclose = (event) => {
    // 1001: server shutting down; 1006: connection lost or the upgrade refused (401/403/429/503
    // are invisible to a browser); 4008: we did not read fast enough. All of them: come back.
    const delay = backoff();
    state.attempt += 1;
    setConnection("reconnecting", `in ${(delay / 1000).toFixed(1)} s (code ${event.code})`);
    setTimeout(connect, delay);
  };
}

// Exponential backoff with jitter: attempt n waits between half and all of
// min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2^n), so a fleet of pages that lost the server at the
// same moment does not come back at the same moment.
function backoff() {
  const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** state.attempt);
  return ceiling / 2 + Math.random() * ceiling / 2;
}

// ---------------------------------------------------------------------------------------------

async function main() {
  let response;
  for (;;) {  // the live server may still be starting: /scenario.json answers 503 until then
    try {
      response = await fetch("/scenario.json");
      if (response.ok) break;
      if (response.status === 401) { setConnection("signed out", "open the URL the demo printed"); return; }
    } catch (_) { /* the page server is gone: keep trying */ }
    await new Promise((done) => setTimeout(done, backoff()));
  }
  const scenario = await response.json();
  state.scenario = scenario;
  for (const e of scenario.entries) { state.entryByDevice.set(e.device_id, e); state.entryById.set(e.id, e); }
  document.getElementById("event-name").textContent = scenario.event.name;
  document.getElementById("stage-name").textContent = scenario.stage.name;
  drawStage(scenario);
  connect();
  pollResults();
  setInterval(pollResults, RESULTS_POLL_MS);
}

main();
