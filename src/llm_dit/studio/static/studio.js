// llm-dit studio page: plain JS over the studio's HTTP API (no libraries, nothing fetched from elsewhere).
// The settings controls are built from GET /api/options (the CLI's option table, by config key).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { options: null, defaults: {}, reference: "", current: null, lastKey: null, pending: null, pinned: [] };
const LIVE_KEYS = ["vl.alpha", "vl.blend", "vl.hidden_layer"]; // changes the studio re-renders from cached rows
const DEBOUNCE_MS = 350;

async function api(path, init) {
  const response = await fetch(path, init);
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}
const post = (path, body) =>
  api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body || {}) });

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) node.append(c);
  return node;
}
const show = (value) => (value === null || value === undefined ? "–" : typeof value === "object" ? JSON.stringify(value) : String(value));

function setStatus(text, error) {
  $("status").textContent = text;
  $("status").classList.toggle("error", !!error);
}

// ---------------------------------------------------------------------------------------------------- settings

function control(info) {
  const id = `set-${info.key}`;
  const label = el("label", { for: id }, el("span", { class: "key", text: info.key }), " ");
  let input;
  if (info.key === "vl.alpha") {
    input = el("input", { id, type: "range", min: 0, max: 1, step: 0.01, value: info.value });
    const out = el("output", { for: id, id: "alpha-value", text: String(info.value) });
    input.addEventListener("input", () => { out.textContent = input.value; });
    label.append(el("div", { class: "slider" }, input, out));
  } else if (info.choices.length) {
    input = el("select", { id }, ...info.choices.map((c) => el("option", { value: c, text: c, selected: c === info.value })));
    label.append(input);
  } else if (info.type === "boolean") {
    input = el("input", { id, type: "checkbox", checked: !!info.value });
    label.append(input);
  } else if (info.type === "integer" || info.type === "number") {
    const b = info.bounds;
    input = el("input", { id, type: "number", step: info.type === "integer" ? 1 : "any", value: show(info.value),
      min: b.ge ?? b.gt, max: b.le ?? b.lt });
    label.append(input);
  } else {
    const value = info.type === "pairs" ? Object.entries(info.value || {}).map(([k, v]) => `${k}=${v}`).join(",")
      : Array.isArray(info.value) ? info.value.join(",") : info.value ?? "";
    input = el("input", { id, type: "text", value, placeholder: info.path ? "a path in the workspace" : "" });
    label.append(input);
  }
  input.dataset.key = info.key;
  label.append(el("span", { class: "help", text: `${info.help} (${info.flags.join(", ")})` }));
  const onChange = () => settingChanged(info.key);
  input.addEventListener(input.type === "range" ? "input" : "change", onChange);
  return label;
}

function readSetting(info) {
  const input = $(`set-${info.key}`);
  if (info.type === "boolean") return input.checked;
  const raw = input.value.trim();
  if (info.type === "integer" || info.type === "number") return raw === "" ? null : Number(raw);
  if (info.type === "pairs") {
    const out = {};
    for (const item of raw.split(",").map((s) => s.trim()).filter(Boolean)) {
      const [k, v] = item.split("=");
      out[k.trim()] = v === "true" ? true : v === "false" ? false : Number(v);
    }
    return out;
  }
  if (info.type.startsWith("list[")) {
    const items = raw.split(",").map((s) => s.trim()).filter(Boolean);
    return info.type === "list[string]" ? items : items.map(Number);
  }
  return raw === "" ? null : raw;
}

function settings() {
  // only what differs from the server's defaults: the request sets exactly what the user changed
  const out = {};
  for (const info of state.options.settings) {
    const value = readSetting(info);
    if (JSON.stringify(value) !== JSON.stringify(info.value ?? (info.type === "pairs" ? {} : null))) out[info.key] = value;
  }
  return out;
}

function alphaBounds() {
  const blend = $("set-vl.blend").value;
  const slider = $("set-vl.alpha");
  const switches = state.options.alpha_values[blend];
  slider.max = switches ? Math.max(...switches) : state.options.alpha_max[blend] ?? state.options.alpha_max.default;
  slider.step = switches ? 1 : 0.01;
}

let debounce = null;
function settingChanged(key) {
  if (key === "vl.blend") alphaBounds();
  if (!$("live").checked || !LIVE_KEYS.includes(key) || !state.current) return;
  if (state.lastKey !== requestKey()) return; // another reference or prompt: the user presses Generate
  clearTimeout(debounce);
  debounce = setTimeout(() => generate(true), DEBOUNCE_MS);
}

const requestKey = () => `${state.reference}\n${$("prompt").value}`;

// ---------------------------------------------------------------------------------------------------- jobs

function follow(job, onStep) {
  return new Promise((resolve) => {
    const events = new EventSource(`/api/jobs/${job.id}/events`);
    events.addEventListener("step", (e) => onStep && onStep(JSON.parse(e.data)));
    for (const end of ["done", "failed", "cancelled"]) {
      events.addEventListener(end, async () => { events.close(); resolve(await api(`/api/jobs/${job.id}`)); });
    }
    events.onerror = async () => {
      const now = await api(`/api/jobs/${job.id}`).catch(() => null);
      if (now && ["done", "failed", "cancelled"].includes(now.status)) { events.close(); resolve(now); }
    };
  });
}

async function generate(live) {
  const body = { prompt: $("prompt").value, settings: settings() };
  if (state.reference) body.image = state.reference;
  if (live) body.draft = true; // shown without waiting for fsync; the Pin button makes it durable
  if (state.pending) post(`/api/jobs/${state.pending}/cancel`).catch(() => {}); // superseded if still queued
  let job;
  try {
    job = await post("/api/generate", body);
  } catch (e) {
    setStatus(e.message, true);
    return;
  }
  state.pending = job.id;
  state.lastKey = requestKey();
  setStatus(live ? "re-rendering…" : "queued…");
  const finished = await follow(job, (e) => {
    $("progress").max = e.total;
    $("progress").value = e.step;
    setStatus(`step ${e.step}/${e.total}`);
  });
  if (state.pending === job.id) state.pending = null;
  if (finished.status !== "done") {
    if (finished.status === "failed") setStatus(finished.error, true);
    refreshHistory();
    return;
  }
  showResult(finished);
  refreshHistory();
  refreshComponents();
}

async function showResult(job) {
  state.current = job;
  const img = $("result-img");
  img.src = `/files/${job.result.image}`;
  img.hidden = false;
  img.dataset.job = job.id;
  const fp = job.forward_passes;
  $("passes").dataset.vl = fp.vl;
  $("passes").dataset.text = fp.text;
  $("passes").textContent = `${job.id}: ${fp.vl} VL + ${fp.text} text forward passes, ${job.seconds.toFixed(2)} s`;
  const alpha = job.result.settings["vl.alpha"];
  setStatus(alpha === undefined ? "done (text only)" : `done: alpha ${alpha}`);
  $("pin").disabled = false;
  $("show-record").disabled = false;
}

async function showRecord(path) {
  $("record").classList.remove("muted");
  $("record").textContent = JSON.stringify(await api(`/files/${path}`), null, 2);
}

// ---------------------------------------------------------------------------------------------------- pinned

function renderPins() {
  const keys = new Set();
  for (const p of state.pinned) Object.keys(p.settings).forEach((k) => keys.add(k));
  const differ = [...keys].filter((k) => new Set(state.pinned.map((p) => JSON.stringify(p.settings[k]))).size > 1);
  $("pinned").replaceChildren(...state.pinned.map((p) => {
    const dl = el("dl");
    for (const k of differ) dl.append(el("dt", { text: k }), el("dd", { text: show(p.settings[k]) }));
    if (!differ.length) dl.append(el("dt", { text: "same settings" }), el("dd", { text: "" }));
    return el("div", { class: "card", "data-job": p.id },
      el("img", { src: `/files/${p.image}`, alt: p.id, onclick: () => showRecord(p.record) }),
      el("div", { class: "muted", text: p.id }), dl);
  }));
}

// ---------------------------------------------------------------------------------------------------- side panels

async function refreshHistory() {
  const history = await api("/api/history");
  $("history").replaceChildren(...history.slice(-50).reverse().map((h) => {
    const item = el("li", { class: h.status, "data-job": h.id });
    if (h.kind === "generate" && h.status === "done") {
      item.append(el("img", { src: `/files/${h.result.image}`, alt: "" }));
      item.addEventListener("click", () => showRecord(h.result.record));
    }
    const alpha = h.request && h.request.settings && h.request.settings["vl.alpha"];
    item.append(`${h.kind} ${h.status}${alpha !== undefined && alpha !== null ? ` α=${alpha}` : ""}`);
    if (h.error) item.title = h.error;
    return item;
  }));
}

async function refreshComponents() {
  const c = await api("/api/components");
  $("loaded").textContent = `loaded: ${c.loaded.length ? c.loaded.join(", ") : "none"}${c.low_memory ? " (low memory)" : ""}`;
  $("totals").textContent = `forward passes VL ${c.forward_passes.vl}, text ${c.forward_passes.text}` +
    (c.cache ? `; cache ${c.cache.hits} hits, ${c.cache.misses} misses` : "");
}

async function refreshFiles() {
  const images = (await api("/api/files?kind=images")).files.filter((f) => !f.startsWith("outputs/"));
  const pick = $("pick");
  const chosen = pick.value;
  pick.replaceChildren(el("option", { value: "", text: "(none: text only)" }),
    ...images.map((f) => el("option", { value: f, text: f, selected: f === chosen })));
  const reports = (await api("/api/files?kind=reports")).files;
  $("reports").replaceChildren(...reports.map((r) => el("li", {}, el("a", { href: `/files/${r}`, "data-report": r,
    text: r.replace(/\/report\.html$/, ""), onclick: (e) => { e.preventDefault(); openReport(r); } }))));
}

function openReport(path) {
  $("report-view").hidden = false;
  $("report-frame").src = `/files/${path}`;
  $("report-view").scrollIntoView();
}

function setReference(path) {
  state.reference = path;
  const preview = $("reference-preview");
  preview.hidden = !path;
  if (path) preview.src = `/files/${path}`;
}

async function upload() {
  const file = $("file").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file);
  try {
    const stored = await api("/api/uploads", { method: "POST", body: form });
    await refreshFiles();
    $("pick").value = stored.path;
    setReference(stored.path);
    setStatus(`reference ${stored.path} (${stored.width}×${stored.height})`);
  } catch (e) {
    setStatus(e.message, true);
  }
}

// ---------------------------------------------------------------------------------------------------- inspector

function barChart(title, rows, series) {
  // rows: [{label, values: [v per series]}]; an inline SVG, one bar per series value
  const ns = "http://www.w3.org/2000/svg";
  const W = 420, row = 14 * series.length + 6, H = 24 + rows.length * row, left = 44;
  const max = Math.max(1e-12, ...rows.flatMap((r) => r.values.filter(Number.isFinite)));
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("width", W);
  svg.setAttribute("class", "chart");
  const add = (tag, attrs, text) => {
    const n = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text !== undefined) n.textContent = text;
    svg.append(n);
  };
  add("text", { x: 0, y: 12 }, `${title} (${series.join(" / ")})`);
  rows.forEach((r, i) => {
    const y = 20 + i * row;
    add("text", { x: 0, y: y + 11 }, `layer ${r.label}`);
    r.values.forEach((v, j) => {
      const w = Number.isFinite(v) ? ((W - left - 70) * v) / max : 0;
      add("rect", { x: left, y: y + j * 14, width: w, height: 12, class: j ? "bar2" : "bar" });
      add("text", { x: left + w + 4, y: y + j * 14 + 10 }, Number.isFinite(v) ? v.toPrecision(3) : "–");
    });
  });
  add("line", { x1: left, y1: 18, x2: left, y2: H, class: "axis" });
  return svg;
}

async function inspect() {
  if (!state.reference) { setStatus("inspect needs a reference image", true); return; }
  $("inspector").replaceChildren(el("p", { class: "muted", text: "inspecting…" }));
  let job;
  try {
    job = await post("/api/inspect", { image: state.reference, prompt: $("prompt").value });
  } catch (e) { setStatus(e.message, true); return; }
  const done = await follow(job);
  if (done.status !== "done") { $("inspector").replaceChildren(el("p", { class: "muted", text: done.error || done.status })); return; }
  const layers = Object.entries(done.result.layers);
  const median = (r) => (r && Number.isFinite(r.median) ? r.median : NaN);
  const sinks = el("table", { class: "sinks" },
    el("tr", {}, el("th", { text: "layer" }), el("th", { text: "VL sinks" }), el("th", { text: "text-encoder sinks" }),
      el("th", { text: "outlier dims (image)" })),
    ...layers.map(([l, r]) => el("tr", {}, el("td", { text: l }), el("td", { text: String(r.sinks.vl.count) }),
      el("td", { text: String(r.sinks.text_encoder.count) }),
      el("td", { text: String((r.std_ratio_image_pad.outliers_above ?? 0) + (r.std_ratio_image_pad.outliers_below ?? 0)) }))));
  $("inspector").replaceChildren(
    barChart("image influence at the prompt rows", layers.map(([l, r]) => ({ label: l, values: [r.image_influence] })), ["influence"]),
    barChart("std ratio to the text encoder (median)", layers.map(([l, r]) => ({ label: l,
      values: [median(r.std_ratio_image_pad), median(r.std_ratio_text)] })), ["image rows", "text rows"]),
    sinks);
  refreshHistory();
}

// ---------------------------------------------------------------------------------------------------- sweeps

async function sweep() {
  const info = state.options.settings.find((s) => s.key === $("sweep-axis").value);
  const values = $("sweep-values").value.split(",").map((s) => s.trim()).filter(Boolean)
    .map((v) => (info.type === "integer" || info.type === "number" ? Number(v) : v));
  const body = { name: $("sweep-name").value, prompts: [$("prompt").value], axes: { [info.key]: values },
    settings: settings(), images: state.reference ? [state.reference] : [] };
  delete body.settings[info.key];
  $("sweep-status").textContent = "queued…";
  try {
    const job = await post("/api/sweeps", body);
    const done = await follow(job);
    $("sweep-status").textContent = done.status === "done"
      ? `${done.result.summary.completed}/${done.result.summary.runs} runs: ${done.result.report}` : done.error || done.status;
    await refreshFiles();
  } catch (e) {
    $("sweep-status").textContent = e.message;
  }
}

// ---------------------------------------------------------------------------------------------------- start

async function start() {
  state.options = await api("/api/options");
  for (const group of ["conditioning", "generation"]) {
    $(group).replaceChildren(...state.options.settings.filter((s) => s.group === group).map(control));
  }
  alphaBounds();
  $("sweep-axis").replaceChildren(...state.options.settings.filter((s) => s.sweep_axis)
    .map((s) => el("option", { value: s.key, text: `${s.key} (${s.sweep_axis})`, selected: s.key === "vl.alpha" })));
  $("file").addEventListener("change", upload);
  $("pick").addEventListener("change", () => setReference($("pick").value));
  $("generate").addEventListener("click", () => generate(false));
  $("pin").addEventListener("click", async () => {
    const j = state.current;
    if (!j || state.pinned.some((p) => p.id === j.id)) return;
    try {
      await post(`/api/jobs/${j.id}/pin`); // a draft is made durable: kept if the machine crashes
    } catch (e) {
      setStatus(e.message, true);
      return;
    }
    state.pinned.push({ id: j.id, image: j.result.image, record: j.result.record, settings: j.result.settings });
    renderPins();
  });
  $("clear-pins").addEventListener("click", () => { state.pinned = []; renderPins(); });
  $("show-record").addEventListener("click", () => state.current && showRecord(state.current.result.record));
  $("inspect").addEventListener("click", inspect);
  $("sweep").addEventListener("click", sweep);
  $("close-report").addEventListener("click", () => { $("report-view").hidden = true; });
  $("release").addEventListener("click", async () => {
    try { await post("/api/components/release"); } catch (e) { setStatus(e.message, true); }
    refreshComponents();
  });
  await Promise.all([refreshFiles(), refreshHistory(), refreshComponents()]);
  document.body.dataset.ready = "true";
}

start().catch((e) => setStatus(`the studio did not start: ${e.message}`, true));
