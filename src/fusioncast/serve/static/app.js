// The fusioncast dashboard: plain JavaScript and SVG, no library, no build step. It calls the server's API
// (/v1/model, /v1/series, /v1/forecast, /v1/monitoring) with the bearer token typed in (sessionStorage).
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const TOKEN_KEY = "fusioncast-token";
const state = { model: null, overview: {}, ids: [], selected: null };

class AuthNeeded extends Error {}

function $(id) { return document.getElementById(id); }

function el(tag, attrs = {}, text) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function fmt(x, digits = 3) {
  if (x === null || x === undefined) return "–";
  if (typeof x !== "number") return String(x);
  return Math.abs(x) >= 1000 ? x.toFixed(0) : Number(x.toPrecision(digits)).toString();
}

async function api(path, body) {
  const headers = {};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.authorization = "Bearer " + token;
  const init = { headers };
  if (body !== undefined) {
    init.method = "POST";
    headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  if (r.status === 401) throw new AuthNeeded();
  const data = await r.json();
  if (!r.ok) throw new Error(`${path}: ${r.status} ${data.detail || ""}`);
  return data;
}

function status(text) { $("status").textContent = text; }

// ---- series: search and the grid coloured by forecast demand ----------------------------------------
function renderGrid() {
  const grid = $("grid");
  grid.replaceChildren();
  const query = $("search").value.trim().toLowerCase();
  const demand = state.ids.map((id) => state.overview[id]?.forecast?.mean_median).filter((x) => x !== undefined);
  const lo = Math.min(...demand), hi = Math.max(...demand);
  for (const id of state.ids) {
    if (query && !id.toLowerCase().includes(query)) continue;
    const f = state.overview[id]?.forecast;
    const tile = el("button", { class: "tile", type: "button", "data-series": id, title: id }, id);
    if (f) {
      const x = hi > lo ? (f.mean_median - lo) / (hi - lo) : 0.5;
      tile.style.background = `rgb(${Math.round(255 - 200 * x)}, ${Math.round(245 - 150 * x)}, ${Math.round(235 - 60 * x)})`;
      if (x > 0.6) tile.classList.add("dark");
      tile.dataset.demand = String(f.mean_median);
      tile.title = `${id}: mean forecast ${fmt(f.mean_median)}`;
    }
    if (id === state.selected) tile.classList.add("selected");
    tile.addEventListener("click", () => select(id));
    grid.append(tile);
  }
}

async function select(id) {
  state.selected = id;
  renderGrid();
  $("series-name").textContent = id;
  const detail = await api(`/v1/series/${encodeURIComponent(id)}`);
  let answer = null;
  if (detail.request) {
    answer = await api("/v1/forecast", { series: [detail.request], interpretation: true });
  }
  renderChart(detail, answer);
  renderInterpretation(answer);
}

// ---- the fan chart: history, P10-P90 band, median ------------------------------------------------------
function renderChart(detail, answer) {
  const chart = $("chart");
  chart.replaceChildren();
  const timeCol = state.model.schema.time_col, target = state.model.schema.target;
  let hist = detail.actuals.time.map((t, i) => [Date.parse(t + "Z"), detail.actuals.value[i]]);
  if (detail.request) {  // the request's own history, where the store has none
    const h = detail.request.history;
    const known = new Set(hist.map((p) => p[0]));
    h[timeCol].forEach((t, i) => {
      const x = Date.parse(t.slice(0, 19) + "Z");
      if (!known.has(x) && h[target][i] !== null) hist.push([x, h[target][i]]);
    });
  }
  hist.sort((a, b) => a[0] - b[0]);
  if (!answer) {
    chart.append(el("p", {}, "No forecast request of this series yet: POST /v1/forecast once, and it shows here."));
    return;
  }
  const f = answer.forecasts[0];
  const keys = Object.keys(f.quantiles).sort((a, b) => Number(a) - Number(b));
  const med = keys.reduce((best, k) => (Math.abs(Number(k) - 0.5) < Math.abs(Number(best) - 0.5) ? k : best));
  const times = f[timeCol].map((t) => Date.parse(t.slice(0, 19) + "Z"));
  const first = times[0] - (times[times.length - 1] - times[0]) * 3;
  hist = hist.filter((p) => p[0] >= first && p[0] < times[0]);
  const lo = f.quantiles[keys[0]], hi = f.quantiles[keys[keys.length - 1]], median = f.quantiles[med];
  const ys = [...hist.map((p) => p[1]), ...lo, ...hi];
  const W = 760, H = 280, P = 36;
  const x0 = Math.min(...hist.map((p) => p[0]), times[0]), x1 = times[times.length - 1];
  const y0 = Math.min(0, ...ys), y1 = Math.max(...ys) * 1.05 || 1;
  const X = (t) => P + ((t - x0) / (x1 - x0 || 1)) * (W - 2 * P);
  const Y = (v) => H - P + -((v - y0) / (y1 - y0)) * (H - 2 * P);
  const svg = el("svg:svg", { viewBox: `0 0 ${W} ${H}`, width: "100%", role: "img",
                              "aria-label": `forecast of ${f.id}` });
  for (let i = 0; i <= 4; i++) {
    const v = y0 + ((y1 - y0) * i) / 4;
    svg.append(el("svg:line", { x1: P, x2: W - P, y1: Y(v), y2: Y(v), stroke: "#e3e5ee" }));
    svg.append(el("svg:text", { x: 2, y: Y(v) + 3 }, fmt(v, 3)));
  }
  const band = times.map((t, i) => `${X(t)},${Y(hi[i])}`).concat(times.map((t, i) => `${X(t)},${Y(lo[i])}`).reverse());
  svg.append(el("svg:polygon", { points: band.join(" "), fill: "#f4a259", "fill-opacity": "0.35", stroke: "none" }));
  const line = (pts, color, width) => el("svg:polyline", { points: pts.join(" "), fill: "none", stroke: color,
                                                            "stroke-width": width });
  svg.append(line(hist.map((p) => `${X(p[0])},${Y(p[1])}`), "#1d2433", 1.5));
  svg.append(line(times.map((t, i) => `${X(t)},${Y(median[i])}`), "#e4572e", 2));
  svg.append(el("svg:text", { x: X(times[0]), y: P - 8 }, `forecast from ${f[timeCol][0]}`));
  svg.append(el("svg:text", { x: P, y: H - 8 },
                `history (black), median (red), P${Math.round(100 * keys[0])}–P${Math.round(100 * keys[keys.length - 1])} band`));
  chart.append(svg);
  chart.dataset.series = String(f.id);
  chart.dataset.times = JSON.stringify(f[timeCol]);
  chart.dataset.median = JSON.stringify(median);
  chart.dataset.lower = JSON.stringify(lo);
  chart.dataset.upper = JSON.stringify(hi);
}

function bars(title, weights) {
  const box = el("div");
  box.append(el("h3", {}, title));
  const entries = Object.entries(weights).sort((a, b) => b[1] - a[1]);
  const max = Math.max(...entries.map((e) => e[1]), 1e-9);
  const svg = el("svg:svg", { viewBox: `0 0 240 ${entries.length * 16 + 4}`, width: "240" });
  entries.forEach(([name, w], i) => {
    svg.append(el("svg:text", { x: 0, y: i * 16 + 12 }, name));
    svg.append(el("svg:rect", { x: 110, y: i * 16 + 3, width: (120 * w) / max, height: 11, fill: "#3d7ea6" }));
  });
  box.append(svg);
  return box;
}

function renderInterpretation(answer) {
  const box = $("interpretation");
  box.replaceChildren();
  const it = answer?.forecasts[0]?.interpretation;
  if (!it) return;
  const row = el("div", { class: "bars" });
  row.append(bars("Static variables", it.static_weights), bars("Encoder variables", it.encoder_weights),
             bars("Decoder variables", it.decoder_weights));
  box.append(row);
  let att = it.attention;
  if (Array.isArray(att[0])) att = att[0].map((_, j) => att.reduce((s, r) => s + r[j], 0) / att.length);
  const max = Math.max(...att, 1e-9);
  const svg = el("svg:svg", { viewBox: `0 0 ${att.length * 8} 60`, width: "100%", height: "60" });
  att.forEach((a, i) => svg.append(el("svg:rect", { x: i * 8, y: 60 - (55 * a) / max, width: 6, height: (55 * a) / max,
                                                    fill: "#7d5ba6" })));
  box.append(el("h3", {}, "Attention over the encoder and decoder steps (mean over horizons)"), svg);
  box.dataset.attention = JSON.stringify(att);
}

// ---- monitoring ---------------------------------------------------------------------------------------
function table(headers, rows) {
  const t = el("table");
  const head = el("tr");
  headers.forEach((h) => head.append(el("th", {}, h)));
  t.append(head);
  rows.forEach((r) => t.append(r));
  return t;
}

function renderMonitoring(m) {
  const box = $("monitoring");
  box.replaceChildren();
  if (!m.overall) {
    box.append(el("p", {}, "No actuals joined with forecasts yet: POST /v1/actuals after forecasting."));
    return;
  }
  const [a, b] = m.interval.map((q) => Math.round(100 * q));
  const o = m.overall;
  Object.assign(box.dataset, { mae: o.mae, coverage: o.coverage, wape: o.wape ?? "", pairs: o.pairs, actuals: m.actuals });
  box.append(el("p", {}, `${m.actuals} actuals from ${m.from} to ${m.to}; ${o.pairs} forecast steps with an actual: ` +
                         `MAE ${fmt(o.mae)}, P${a}–P${b} coverage ${fmt(100 * o.coverage, 3)} %, WAPE ${fmt(o.wape)}.`));
  const W = 760, H = 140, P = 30, n = m.by_hour.length;
  const maxMae = Math.max(...m.by_hour.map((h) => h.mae), 1e-9);
  const svg = el("svg:svg", { viewBox: `0 0 ${W} ${H}`, width: "100%" });
  const bw = (W - 2 * P) / n;
  m.by_hour.forEach((h, i) => {
    const bh = ((H - 2 * P) * h.mae) / maxMae;
    svg.append(el("svg:rect", { x: P + i * bw, y: H - P - bh, width: Math.max(1, bw - 2), height: bh, fill: "#3d7ea6" }));
  });
  const cov = m.by_hour.map((h, i) => `${P + i * bw + bw / 2},${H - P - (H - 2 * P) * h.coverage}`);
  svg.append(el("svg:polyline", { points: cov.join(" "), fill: "none", stroke: "#e4572e", "stroke-width": 2 }));
  svg.append(el("svg:text", { x: P, y: 12 }, `MAE by hour (bars, max ${fmt(maxMae)}); coverage (red line, 0–100 %)`));
  box.append(svg);
  const hourRows = m.by_hour.map((h) => {
    const tr = el("tr", { "data-hour": h.hour, "data-mae": h.mae, "data-coverage": h.coverage, "data-pairs": h.pairs });
    [h.hour, h.pairs, fmt(h.mae), fmt(100 * h.coverage, 3)].forEach((v) => tr.append(el("td", {}, String(v))));
    return tr;
  });
  const seriesRows = (list, cls) => list.map((s) => {
    const tr = el("tr", { class: cls, "data-series": s.series, "data-wape": s.wape ?? "", "data-total": s.total ?? "" });
    [s.series, s.pairs ?? "–", fmt(s.mae), fmt(s.wape), s.coverage === undefined ? "–" : fmt(100 * s.coverage, 3),
     fmt(s.total)].forEach((v) => tr.append(el("td", {}, String(v))));
    return tr;
  });
  const two = el("div", { class: "bars" });
  const worst = el("div"), busiest = el("div");
  worst.append(el("h3", {}, "Worst series (WAPE)"),
               table(["series", "pairs", "MAE", "WAPE", "coverage %", "total"], seriesRows(m.worst, "worst")));
  busiest.append(el("h3", {}, "Busiest series (sum of actuals)"),
                 table(["series", "pairs", "MAE", "WAPE", "coverage %", "total"], seriesRows(m.busiest, "busiest")));
  two.append(worst, busiest);
  box.append(two, el("h3", {}, "By hour"), table(["hour", "pairs", "MAE", "coverage %"], hourRows));
}

// ---- model card ---------------------------------------------------------------------------------------
function renderCard(model) {
  const box = $("card");
  box.replaceChildren();
  const d = model.data;
  const span = d ? `${d.start} to ${d.end}: ${d.rows} rows, ${d.series} series (validation from ${d.val_start}, test from ${d.test_start})` : "–";
  const rows = [["name", model.name], ["version", model.version], ["created", model.created_at], ["training data", span],
                ["frequency", model.freq], ["history / horizon", `${model.max_encoder_length} / ${model.max_prediction_length} steps`],
                ["quantiles", model.quantiles.join(", ")], ["series in training", model.series.length],
                ["calibration", model.calibration ? `${model.calibration.method} (fitted on ${model.calibration.fitted_on?.windows ?? "?"} windows)` : "none"],
                ["ONNX parity", model.parity ? `max rel. diff ${fmt(model.parity.max_rel_diff)} on ${model.parity.windows} ${model.parity.split} windows (tolerance ${model.parity.tolerance})` : "–"]];
  for (const [k, v] of Object.entries(model.versions || {})) rows.push([k, v]);
  box.append(table(["", ""], rows.map(([k, v]) => {
    const tr = el("tr");
    tr.append(el("td", {}, k), el("td", {}, String(v ?? "–")));
    return tr;
  })));
  const metrics = model.metrics || {};
  const names = ["mae", "rmse", "smape", "mase", "coverage_p10_p90", "n_windows"];
  const splitRows = [];
  for (const split of ["val", "test"]) {
    if (!metrics[split]) continue;
    for (const [label, m] of [[split, metrics[split]], [`${split}: seasonal naive`, metrics.baseline?.[split]]]) {
      if (!m) continue;
      const tr = el("tr", { "data-split": label });
      tr.append(el("td", {}, label));
      names.forEach((n) => tr.append(el("td", {}, fmt(m[n]))));
      splitRows.push(tr);
    }
  }
  if (splitRows.length) box.append(el("h3", {}, "Metrics against the seasonal-naive baseline"), table(["", ...names], splitRows));
}

// ---- start --------------------------------------------------------------------------------------------
async function load() {
  try {
    state.model = await api("/v1/model");
    $("token-form").hidden = true;
    $("model-name").textContent = `${state.model.name} ${state.model.version}`;
    renderCard(state.model);
    state.overview = await api("/v1/series").catch(() => ({}));
    state.ids = [...new Set([...state.model.series, ...Object.keys(state.overview)])].sort();
    renderGrid();
    const monitoring = await api("/v1/monitoring").catch(() => null);
    if (monitoring) renderMonitoring(monitoring);
    const first = state.ids.find((id) => state.overview[id]?.forecast) || state.ids[0];
    if (first) await select(first);
    status("");
    document.body.dataset.ready = "true";
  } catch (e) {
    if (e instanceof AuthNeeded) {
      $("token-form").hidden = false;
      status("This server needs an API token.");
    } else {
      status(String(e.message || e));
    }
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    load();
  });
  $("search").addEventListener("input", renderGrid);
  load();
});
