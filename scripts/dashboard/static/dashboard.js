// medchain dashboard: one EventSource, a snapshot then one tick per poll; plain DOM and canvas.
// Every value from a node is set as text (never as HTML): a node cannot inject markup here.
"use strict";

const HISTORY = 600;          // points kept, as the server keeps them
const WINDOW_S = 300;         // the charts show the last five minutes
const FEED_MAX = 200;
const state = { nodes: [], series: [], feed: [], summary: {} };

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
const show = (v, unit) => (v === null || v === undefined ? "-" : unit ? `${v} ${unit}` : String(v));
const clock = (t) => new Date(t * 1000).toLocaleTimeString([], { hour12: false });

function renderSummary() {
  const s = state.summary || {};
  document.getElementById("s-nodes").textContent = s.n === undefined ? "-" : `${s.ok}/${s.n}`;
  document.getElementById("s-height").textContent = show(s.height);
  document.getElementById("s-view").textContent = show(s.view);
  document.getElementById("s-primary").textContent = s.primary === null || s.primary === undefined ? "-" : `node ${s.primary}`;
  document.getElementById("s-tps").textContent = show(s.tx_per_s);
  document.getElementById("s-p50").textContent = show(s.p50_ms);
}

function nodeCard(n) {
  const card = el("div", "node");
  card.dataset.node = n.id;
  card.dataset.health = n.health;
  const title = el("div", "title");
  const name = el("span", "name", `node ${n.id}`);
  title.append(name);
  if (n.health !== "down" && n.is_primary) title.append(el("span", "badge", "primary"));
  title.append(el("span", "health", n.health));
  card.append(title);
  const kv = el("dl", "kv");
  const rows = [
    ["height", show(n.height)],
    ["view", show(n.view)],
    ["primary", n.primary === null || n.primary === undefined ? "-" : `node ${n.primary}`],
    ["lag", n.lag === null || n.lag === undefined ? "-" : `${n.lag} blocks`],
    ["mempool", show(n.mempool)],
    ["audit", n.audit === null || n.audit === undefined ? "-" : n.audit + (n.evidence ? ` (${n.evidence} evidence)` : "")],
    ["faults", n.faults && n.faults.length ? n.faults.join(", ") : "none"],
  ];
  for (const [k, v] of rows) {
    const dd = el("dd", "", v);
    dd.dataset.field = k;
    kv.append(el("dt", "", k), dd);
  }
  card.append(kv);
  if (n.health !== "ok") card.append(el("div", "why", n.health_detail || ""));
  card.title = n.url;
  return card;
}

function renderNodes() {
  const box = document.getElementById("nodes");
  box.replaceChildren(...state.nodes.map(nodeCard));
}

function renderFeed(items) {
  const list = document.getElementById("feed");
  if (!state.feed.length && !list.children.length) {
    list.append(el("li", "empty", "nothing has happened yet"));
    return;
  }
  const empty = list.querySelector(".empty");
  if (empty && items.length) empty.remove();
  for (const it of items) {
    const li = el("li");
    li.dataset.level = it.level;
    li.dataset.kind = it.kind;
    li.append(el("time", "", clock(it.t)), el("span", "kind", it.kind), el("span", "text", it.text));
    list.prepend(li);
  }
  while (list.children.length > FEED_MAX) list.lastChild.remove();
}

function drawChart(canvas, lines, unit) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight || 180;
  canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
  const g = canvas.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  const left = 46, right = 8, top = 10, bottom = 22;
  const now = state.series.length ? state.series[state.series.length - 1].t : Date.now() / 1000;
  const t0 = now - WINDOW_S;
  let max = 0;
  for (const l of lines) for (const p of state.series) if (p.t >= t0 && p[l.key] != null) max = Math.max(max, p[l.key]);
  max = max > 0 ? max * 1.15 : 1;
  const x = (t) => left + ((t - t0) / WINDOW_S) * (w - left - right);
  const y = (v) => top + (1 - v / max) * (h - top - bottom);
  g.strokeStyle = "#dde1e6"; g.fillStyle = "#6b7482"; g.font = "11px system-ui, sans-serif"; g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4, yy = y(v);
    g.beginPath(); g.moveTo(left, yy); g.lineTo(w - right, yy); g.stroke();
    g.fillText(v >= 100 ? v.toFixed(0) : v.toFixed(1), 4, yy + 4);
  }
  for (let s = 0; s <= WINDOW_S; s += 60) g.fillText(s === WINDOW_S ? "now" : `-${(WINDOW_S - s) / 60}m`, x(t0 + s) - 10, h - 6);
  for (const l of lines) {
    g.strokeStyle = l.color; g.lineWidth = 1.8; g.beginPath();
    let pen = false;
    for (const p of state.series) {
      if (p.t < t0 || p[l.key] == null) { pen = false; continue; }
      if (pen) g.lineTo(x(p.t), y(p[l.key])); else g.moveTo(x(p.t), y(p[l.key]));
      pen = true;
    }
    g.stroke();
  }
  let lx = left + 6;
  for (const l of lines) {
    g.fillStyle = l.color; g.fillRect(lx, top, 10, 3); g.fillStyle = "#1d2430";
    g.fillText(l.label, lx + 14, top + 5); lx += g.measureText(l.label).width + 30;
  }
  if (!state.series.some((p) => lines.some((l) => p[l.key] != null))) {
    g.fillStyle = "#6b7482"; g.fillText(`no ${unit} yet`, left + 10, h / 2);
  }
}

function renderCharts() {
  drawChart(document.getElementById("chart-tps"), [{ key: "tx_per_s", color: "#2463c7", label: "tx/s" }], "throughput");
  drawChart(document.getElementById("chart-latency"), [
    { key: "p50_ms", color: "#1f8b4c", label: "p50" },
    { key: "p95_ms", color: "#c98a00", label: "p95" },
  ], "latency (needs the nodes' /metrics)");
}

function renderAll() { renderSummary(); renderNodes(); renderCharts(); }

function connect() {
  const conn = document.getElementById("conn");
  const es = new EventSource("/api/stream");
  es.addEventListener("snapshot", (ev) => {
    const snap = JSON.parse(ev.data);
    state.nodes = snap.nodes; state.series = snap.series; state.summary = snap.summary; state.feed = snap.feed;
    document.getElementById("feed").replaceChildren();
    renderFeed(snap.feed);
    renderAll();
  });
  es.addEventListener("tick", (ev) => {
    const tick = JSON.parse(ev.data);
    state.nodes = tick.nodes; state.summary = tick.summary;
    state.series.push(tick.point);
    if (state.series.length > HISTORY) state.series.splice(0, state.series.length - HISTORY);
    state.feed.push(...tick.feed);
    renderFeed(tick.feed);
    renderAll();
    document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
  });
  es.onopen = () => { conn.dataset.state = "live"; conn.textContent = "live"; };
  es.onerror = () => { conn.dataset.state = "reconnecting"; conn.textContent = "reconnecting"; };
}

window.addEventListener("resize", renderCharts);
connect();
