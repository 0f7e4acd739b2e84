// xwhep dashboard: live parts without reloading (polling every 2 s) and the overview's chart.
// Plain JS, no build step, no third-party code.
"use strict";

const EVERY = 2000;

async function fetchText(url) {
  const resp = await fetch(url, { credentials: "same-origin", headers: { "X-Requested-With": "xw-ui" } });
  if (resp.status === 401) { window.location.reload(); return null; }  // the session ended: sign in again
  if (!resp.ok) return null;
  return resp.text();
}

// <div data-live="URL">: its content is re-rendered by the server every 2 s (paused while hidden).
function live(el) {
  const tick = async () => {
    if (!document.hidden) {
      try {
        const html = await fetchText(el.dataset.live);
        if (html !== null && html !== el.innerHTML) el.innerHTML = html;
      } catch (e) { /* the server is restarting: try again at the next tick */ }
    }
    setTimeout(tick, EVERY);
  };
  setTimeout(tick, EVERY);
}

function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function line(values, top, w, h, cls) {
  const n = values.length;
  const pts = values.map((v, i) => `${(i / Math.max(n - 1, 1)) * w},${h - (v / top) * (h - 8) - 4}`);
  return svg("polyline", { points: pts.join(" "), class: cls });
}

function drawChart(chart, hist, peak) {
  const w = 600, h = 200;
  chart.replaceChildren();
  for (let i = 1; i < 4; i++) chart.append(svg("line", { x1: 0, x2: w, y1: (h * i) / 4, y2: (h * i) / 4, stroke: "#e6e9ec" }));
  const topRate = Math.max(...hist.rate, 0.01), topDepth = Math.max(...hist.depth, 1);
  chart.append(line(hist.depth, topDepth, w, h, "depth"));
  chart.append(line(hist.rate, topRate, w, h, "rate"));
  if (peak) peak.textContent = `(peaks: ${topRate.toFixed(2)} jobs/s, ${topDepth} queued)`;
}

// The overview: counts, workers and the chart from one small JSON document.
function overview(root) {
  const chart = root.querySelector("#chart"), peak = root.querySelector("[data-peak]");
  let lastChart = 0;
  const tick = async () => {
    if (!document.hidden) {
      try {
        const text = await fetchText(root.dataset.overview);
        if (text !== null) {
          const doc = JSON.parse(text);
          for (const [status, n] of Object.entries(doc.counts)) {
            const el = root.querySelector(`[data-count="${status}"]`);
            if (el) el.textContent = n;
          }
          root.querySelector("[data-workers]").textContent = doc.workers.alive;
          root.querySelector("[data-workers-total]").textContent = doc.workers.total;
          if (Date.now() - lastChart > 10000 || lastChart === 0) { drawChart(chart, doc.history, peak); lastChart = Date.now(); }
        }
      } catch (e) { /* try again at the next tick */ }
    }
    setTimeout(tick, EVERY);
  };
  tick();
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-live]").forEach(live);
  const root = document.querySelector("[data-overview]");
  if (root) overview(root);
  document.addEventListener("submit", (ev) => {
    const form = ev.target;
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) ev.preventDefault();
  });
});
