// streamembed web map: anomaly cells by label (fill) and alert status (outline), a date
// slider, a tile filter, the latest RGB quicklook, a cell's history, downloads of the view.
// It follows a running daemon: the summary is polled and new dates appear on their own.
"use strict";

const state = { config: null, summary: null, dates: [], layer: null, overlays: {}, features: 0,
                shownDate: null, ready: false, historyOpen: false };
window.streamembed = state; // read by the browser test and handy in the console

const $ = (id) => document.getElementById(id);
const map = L.map("map", { preferCanvas: false });
const STATUS_STYLE = {
  provisional: { dashArray: "4 3", weight: 2, fillOpacity: 0.35 },
  confirmed: { dashArray: null, weight: 2.5, fillOpacity: 0.6 },
  recovered: { dashArray: "1 4", weight: 1.5, fillOpacity: 0.1 },
  retracted: { dashArray: "1 4", weight: 1, fillOpacity: 0.05 },
};

// Past this many tiles the page asks for the cells in the map's view only (the server reads
// the partitions of the tiles the box touches) and draws RGB quicklooks of the tiles in view.
const MANY_TILES = 16;

function many() {
  return state.summary && state.summary.tiles.length > MANY_TILES;
}

function viewBox() {
  const b = map.getBounds();
  return [b.getWest(), b.getSouth(), b.getEast(), b.getNorth()].map((v) => v.toFixed(5)).join(",");
}

function query(extra) {
  const p = new URLSearchParams();
  const tile = $("tile").value;
  const date = state.dates[+$("date").value];
  if (tile) p.set("tile", tile);
  else if (many()) p.set("bbox", viewBox());
  if (date) p.set("date", date);
  if ($("until").checked) p.set("until", "1");
  for (const [k, v] of Object.entries(extra || {})) p.set(k, v);
  return p.toString();
}

function styleOf(feature) {
  const p = feature.properties;
  const colour = state.config.labelColours[p.label] || "#ffffff";
  const s = STATUS_STYLE[p.status] || STATUS_STYLE.provisional;
  return { color: colour, fillColor: colour, className: `anomaly-cell status-${p.status}`, ...s };
}

async function getJSON(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}

// Each slider step starts a request; their answers can come back out of order, so only the
// newest request draws (an older one arriving last would show another date's cells under
// this date's label).
let anomaliesAsked = 0;

async function loadAnomalies() {
  const asked = ++anomaliesAsked;
  const date = state.dates[+$("date").value];
  $("date-label").textContent = date || "no anomalies yet";
  const fc = await getJSON(`/api/anomalies?${query()}`);
  if (asked !== anomaliesAsked) return;
  if (state.layer) state.layer.remove();
  state.layer = L.geoJSON(fc, {
    style: styleOf,
    onEachFeature: (f, layer) => {
      const p = f.properties;
      layer.bindTooltip(`${p.label} (${p.status})<br>score ${p.score.toFixed(1)}, ` +
                        `cell ${p.cell_y}/${p.cell_x} of ${p.tile}`);
      layer.on("click", () => openHistory(p.tile, p.cell_y, p.cell_x));
    },
  }).addTo(map);
  state.features = fc.features.length;
  state.shownDate = date || null;
  $("count").textContent = `${fc.features.length} anomalous cells` +
    ($("until").checked ? ` up to ${date}` : ` on ${date || "–"}`);
  $("dl-geojson").href = `/api/download?${query({ format: "geojson" })}`;
  $("dl-parquet").href = `/api/download?${query({ format: "parquet" })}`;
}

function fitToCells() {
  // A chosen tile: the whole tile. Otherwise the cells of the view, not the whole archive
  // (two tiles far apart would make the cells specks).
  const b = state.summary.tile_bounds[$("tile").value];
  if (b) map.fitBounds([[b[1], b[0]], [b[3], b[2]]]);
  else if (state.layer && state.features) map.fitBounds(state.layer.getBounds(), { maxZoom: 13, padding: [30, 30] });
}

async function loadQuicklooks() {
  for (const o of Object.values(state.overlays)) o.remove();
  state.overlays = {};
  const mode = $("rgb").value;
  if (mode === "none") return;
  const date = mode === "date" ? state.dates[+$("date").value] : "";
  let tiles = $("tile").value ? [$("tile").value] : state.summary.tiles;
  if (!$("tile").value && many()) {
    const b = map.getBounds();
    tiles = tiles.filter((t) => {
      const tb = state.summary.tile_bounds[t];
      return tb && tb[0] <= b.getEast() && b.getWest() <= tb[2] && tb[1] <= b.getNorth() && b.getSouth() <= tb[3];
    }).slice(0, MANY_TILES);
  }
  for (const tile of tiles) {
    try {
      const q = await getJSON(`/api/quicklook/${tile}.json?date=${date || ""}`);
      const img = L.imageOverlay(`/api/quicklook/${tile}.png?date=${q.date}&acq=${encodeURIComponent(q.acquisition_id)}`,
                                 q.bounds, { opacity: 0.9, className: "quicklook" });
      state.overlays[tile] = img.addTo(map);
      img.bringToBack();
    } catch (err) {
      console.warn(`no quicklook for ${tile}: ${err}`);
    }
  }
}

function setDates(dates) {
  const slider = $("date");
  const wasLast = +slider.value >= state.dates.length - 1;
  const current = state.dates[+slider.value];
  state.dates = dates;
  slider.max = Math.max(0, dates.length - 1);
  if (($("follow").checked && wasLast) || current === undefined) slider.value = slider.max;
  else slider.value = Math.max(0, dates.indexOf(current));
}

async function refresh(first) {
  const s = await getJSON("/api/summary");
  const changed = !state.summary || JSON.stringify(s) !== JSON.stringify(state.summary);
  state.summary = s;
  if (!changed) return;
  const tileSel = $("tile");
  for (const t of s.tiles) {
    if (![...tileSel.options].some((o) => o.value === t)) tileSel.add(new Option(t, t));
  }
  setDates(s.dates);
  if (first && s.bounds) map.fitBounds([[s.bounds[1], s.bounds[0]], [s.bounds[3], s.bounds[2]]]);
  await loadAnomalies();
  if (first) fitToCells();
  await loadQuicklooks();
}

function legend() {
  const box = $("legend");
  for (const [name, colour] of Object.entries(state.config.labelColours)) {
    box.insertAdjacentHTML("beforeend",
      `<div><span class="swatch" style="background:${colour}"></span>${name.replace("_", " ")}</div>`);
  }
  for (const [name, s] of Object.entries(STATUS_STYLE)) {
    box.insertAdjacentHTML("beforeend",
      `<div class="status"><span class="swatch" style="border-style:${s.dashArray ? "dashed" : "solid"}"></span>${name}</div>`);
  }
}

async function openHistory(tile, y, x) {
  const h = await getJSON(`/api/history?tile=${tile}&y=${y}&x=${x}`);
  $("history-title").textContent = `Cell ${y}/${x} of ${tile} (${h.cell_m} m)`;
  drawHistory(h);
  const body = $("history-table").querySelector("tbody");
  body.innerHTML = "";
  for (const a of h.anomalies) {
    body.insertAdjacentHTML("beforeend",
      `<tr class="anomaly-row"><td>${a.time.slice(0, 10)}</td><td>${a.score.toFixed(1)}</td>` +
      `<td>${a.distance.toFixed(3)}</td><td>${(a.clear ?? 0).toFixed(2)}</td>` +
      `<td>${a.label}</td><td>${a.status}</td></tr>`);
  }
  $("history").hidden = false;
  state.historyOpen = true;
}

function drawHistory(h) {
  // Top: clear fraction (grey) and NDVI (green) at every look; bottom: anomaly scores (red).
  const svg = $("history-chart");
  const W = 300, top = 10, mid = 130, bottom = 210, left = 30;
  const ns = "http://www.w3.org/2000/svg";
  svg.innerHTML = "";
  const times = h.looks.map((l) => Date.parse(l.time));
  if (!times.length) return;
  const t0 = Math.min(...times), t1 = Math.max(...times, t0 + 1);
  const X = (t) => left + ((t - t0) / (t1 - t0)) * (W - left - 6);
  const add = (tag, attrs, text) => {
    const el = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text) el.textContent = text;
    svg.appendChild(el);
    return el;
  };
  const Y1 = (v) => mid - (v + 0.2) / 1.2 * (mid - top); // -0.2 .. 1
  const looks = h.looks.filter((l) => l.clear !== null);
  for (const l of looks) {
    add("circle", { cx: X(Date.parse(l.time)), cy: Y1(l.clear), r: 1.8, fill: "#999", class: "look-clear" });
  }
  // NDVI only where the cell was clear: a cloud's NDVI is not the ground's.
  const pts = h.looks.filter((l) => l.ndvi !== null && l.clear >= 0.9)
    .map((l) => `${X(Date.parse(l.time))},${Y1(l.ndvi)}`);
  add("polyline", { points: pts.join(" "), fill: "none", stroke: "#2a9d3a", "stroke-width": 1.5, class: "line-ndvi" });
  add("text", { x: 0, y: top + 8 }, "1");
  add("text", { x: 0, y: mid }, "-0.2");
  add("text", { x: left, y: mid + 14 }, "clear fraction (grey), clear NDVI (green); scores:");
  const maxScore = Math.max(1, ...h.anomalies.map((a) => a.score));
  for (const a of h.anomalies) {
    const x = X(Date.parse(a.time));
    const y = bottom - (a.score / maxScore) * (bottom - mid - 22);
    add("line", { x1: x, x2: x, y1: bottom, y2: y, stroke: "#d33", "stroke-width": 3, class: "score-bar" });
  }
  add("text", { x: 0, y: mid + 30 }, maxScore.toFixed(0));
  add("text", { x: left, y: bottom + 14 }, new Date(t0).toISOString().slice(0, 10));
  add("text", { x: W - 70, y: bottom + 14 }, new Date(t1).toISOString().slice(0, 10));
}

async function main() {
  state.config = await getJSON("/api/config");
  $("output").textContent = state.config.output;
  if (state.config.basemap) {
    L.tileLayer(state.config.basemap, { maxZoom: 19, attribution: "basemap" }).addTo(map);
  }
  legend();
  for (const id of ["date", "until"]) $(id).addEventListener("input", loadAnomalies);
  $("date").addEventListener("input", () => { if ($("rgb").value === "date") loadQuicklooks(); });
  $("tile").addEventListener("input", async () => { await loadAnomalies(); fitToCells(); await loadQuicklooks(); });
  $("rgb").addEventListener("input", loadQuicklooks);
  let moved = null;
  map.on("moveend", () => {
    if (!state.ready || !many() || $("tile").value) return;
    clearTimeout(moved);
    moved = setTimeout(async () => { await loadAnomalies(); await loadQuicklooks(); }, 300);
  });
  $("history-close").addEventListener("click", () => { $("history").hidden = true; state.historyOpen = false; });
  await refresh(true);
  state.ready = true;
  setInterval(() => refresh(false).catch((e) => console.warn(e)), state.config.refreshSeconds * 1000);
}

main().catch((err) => {
  $("count").textContent = `error: ${err.message}`;
  console.error(err);
});
