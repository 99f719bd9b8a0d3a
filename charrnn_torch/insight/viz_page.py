"""The page ``visualize.py``'s numbers are shown on: one self-contained HTML file (inline CSS and
JS, the data embedded as JSON, no requests), drawn in the browser from that data."""
import base64

from .embed import html_text, script_json

PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>charrnn_torch: inside __TITLE__</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 72em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; } td, th { padding: 2px 10px 2px 0; text-align: left; vertical-align: top; }
.text { font: 13px/1.6 ui-monospace, monospace; white-space: pre-wrap; border: 1px solid #ddd; padding: 8px;
        max-height: 26em; overflow-y: auto; }
.text span { cursor: default; }
.snippet { max-height: 9em; }
#tip { position: fixed; display: none; background: #fff; border: 1px solid #888; padding: 6px 9px;
       font: 12px/1.4 ui-monospace, monospace; box-shadow: 2px 2px 6px rgba(0,0,0,.2); pointer-events: none; }
.feature-row { cursor: pointer; } .feature-row:hover { background: #f3f3f3; }
.muted { color: #888; } .scatter { display: inline-block; margin-right: 1.5em; }
.key span { display: inline-block; width: 10px; height: 10px; margin: 0 3px 0 10px; }
</style>
</head>
<body>
<h1>What the network learned</h1>
<table id="header"></table>

<h2>Surprise</h2>
<p>Each character shaded by its loss, &minus;log<sub>2</sub> p, given the text before it (white: 0 bits,
red: 8 or more). Mean: <b id="mean-bits"></b> bits/char. Hover a character for the model's top guesses.</p>
<div class="text" id="surprise-text"></div>

<h2>Interpretable cells</h2>
<p>For each feature of the text, the hidden unit whose activation tracks it best (|Pearson correlation|),
over all layers. Click a row to colour the text below by that unit (blue &minus;1, white 0, red +1).</p>
<table id="features"><tr><th>feature</th><th>best unit</th><th>correlation</th><th>best per layer</th></tr></table>
<p id="absent" class="muted"></p>
<p>Colour by unit: <select id="unit-group"></select> unit <input id="unit-index" type="number" min="0" value="0"
 style="width:6em"> <span id="unit-label" class="muted"></span></p>
<div class="text" id="unit-text"></div>
<div id="snippets"></div>

<h2>Saturation</h2>
<p id="saturation-note"></p>
<div id="saturation"></div>

<h2>Gradients through time</h2>
<p id="gradients-note"></p>
<div id="gradients"></div>
<table id="gradient-factors"></table>

<div id="tip"></div>
<script id="data" type="application/json">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const text = D.text, N = text.length, U = D.units.length;
const acts = new Int8Array(Uint8Array.from(atob(D.activations), c => c.charCodeAt(0)).buffer);

// A number of the data, or n/a: what was not finite is null in the data (embed.script_json).
function fixed(v, digits) { return v == null || !isFinite(v) ? "n/a" : v.toFixed(digits); }

function shown(ch) { return ch === "\n" ? "\u21b5\n" : ch; }
function label(ch) { return ch === "\n" ? "\\n" : ch === " " ? "\u2423" : ch === "\t" ? "\\t" : ch; }

function fillText(el, n) {
  const frag = document.createDocumentFragment();
  for (let t = 0; t < n; t++) {
    const s = document.createElement("span");
    s.textContent = shown(text[t]);
    s.dataset.i = t;
    frag.appendChild(s);
  }
  el.appendChild(frag);
  return el.children;
}

function diverging(v) {  // -1 blue, 0 white, +1 red
  const a = Math.min(1, Math.abs(v)), c = Math.round(255 * (1 - a));
  return v >= 0 ? `rgb(255,${c},${c})` : `rgb(${c},${c},255)`;
}

function colourByUnit(spans, u) {
  for (let t = 0; t < spans.length; t++) spans[t].style.background = diverging(acts[t * U + u] / 127);
}

function header() {
  const rows = [["checkpoint", D.header.checkpoint], ["step", D.header.step],
    ["validation loss", fixed(D.header.val_loss, 4)], ["cell", D.header.cell],
    ["size", `${D.header.num_layers} x ${D.header.hidden_size} (${D.header.parameters.toLocaleString()} parameters)`],
    ["text", D.header.source], ...(D.header.corpus ? [["trained on", D.header.corpus]] : [])];
  const table = document.getElementById("header");
  for (const [k, v] of rows) table.insertRow().innerHTML = `<th>${k}</th><td></td>`;
  rows.forEach(([k, v], i) => { table.rows[i].cells[1].textContent = v; });
}

function surprise() {
  const S = D.surprise, spans = fillText(document.getElementById("surprise-text"), N);
  document.getElementById("mean-bits").textContent = fixed(D.header.mean_bits, 3);
  for (let t = 1; t < N; t++) {
    const a = Math.min(1, S.bits[t - 1] / 8), c = Math.round(255 * (1 - a));
    spans[t].style.background = `rgb(255,${c},${c})`;
  }
  const tip = document.getElementById("tip"), box = document.getElementById("surprise-text");
  box.addEventListener("mouseover", e => {
    const t = Number(e.target.dataset.i);
    if (!(t >= 0)) return;
    let html = `<b>${escape(label(text[t]))}</b> `;
    if (t === 0) html += "<div class='muted'>the first character: nothing predicts it</div>";
    else {
      html += `${fixed(S.bits[t - 1], 2)} bits, rank ${S.rank[t - 1]}<ol class="guesses">`;
      S.top_ids[t - 1].forEach((id, k) => {
        html += `<li class="guess">${escape(label(D.vocab[id]))}: ${fixed(100 * S.top_probs[t - 1][k], 1)}%</li>`;
      });
      html += "</ol>";
    }
    tip.innerHTML = html;
    tip.style.display = "block";
    tip.style.left = (e.clientX + 14) + "px";
    tip.style.top = (e.clientY + 14) + "px";
  });
  box.addEventListener("mouseleave", () => { tip.style.display = "none"; });
}

function escape(s) { const d = document.createElement("div"); d.textContent = s; return d.innerHTML; }

function unitName(u) { const [s, l, i] = D.units[u]; return `${s} layer ${l} unit ${i}`; }
function unitIndex(s, l, i) { return D.groups.findIndex(g => g[0] === s && g[1] === l) * D.header.hidden_size + i; }

function cells() {
  const spans = fillText(document.getElementById("unit-text"), N);
  const group = document.getElementById("unit-group"), index = document.getElementById("unit-index");
  D.groups.forEach(([s, l], k) => group.add(new Option(`${s}, layer ${l}`, k)));
  index.max = D.header.hidden_size - 1;
  function pick() {
    const i = Math.max(0, Math.min(D.header.hidden_size - 1, Number(index.value) || 0));
    const u = Number(group.value) * D.header.hidden_size + i;
    document.getElementById("unit-label").textContent = unitName(u);
    colourByUnit(spans, u);
  }
  group.addEventListener("change", pick);
  index.addEventListener("input", pick);
  const table = document.getElementById("features"), snippets = document.getElementById("snippets");
  const shown = Object.entries(D.search).filter(([, f]) => f.occurs);  // a feature the text lacks says nothing
  const absent = Object.keys(D.search).filter(name => !D.search[name].occurs);
  document.getElementById("absent").textContent = absent.length ? `Not in this text, so not searched: ${absent.join(", ")}.` : "";
  for (const [name, f] of shown) {
    const row = table.insertRow();
    row.className = "feature-row";
    const b = f.units[0];
    row.innerHTML = `<td>${name}</td><td>${b.state} layer ${b.layer} unit ${b.unit}</td><td>${fixed(b.corr, 3)}</td>` +
      `<td class=muted>${f.best_per_layer.map(e => `${e.state}${e.layer}:${e.unit} (${fixed(e.corr, 2)})`).join(", ")}</td>`;
    row.addEventListener("click", () => {
      group.value = D.groups.findIndex(g => g[0] === b.state && g[1] === b.layer);
      index.value = b.unit;
      pick();
    });
    const h = document.createElement("p");
    h.innerHTML = `<b>${name}</b>: ${b.state} layer ${b.layer} unit ${b.unit}, correlation ${fixed(b.corr, 3)}`;
    const box = document.createElement("div");
    box.className = "text snippet";
    snippets.append(h, box);
    colourByUnit(fillText(box, Math.min(N, 600)), unitIndex(b.state, b.layer, b.unit));
  }
  if (shown.length) {  // start at something that means something: the first feature's best unit
    const b = shown[0][1].units[0];
    group.value = D.groups.findIndex(g => g[0] === b.state && g[1] === b.layer);
    index.value = b.unit;
  }
  pick();
}

function scatter(points, colours, title) {  // points: [[x, y, colour index]], fractions in [0, 1]
  const W = 220, P = 30, ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", W + P); svg.setAttribute("height", W + P);
  svg.innerHTML = `<rect x="${P}" y="0" width="${W}" height="${W}" fill="none" stroke="#999"/>` +
    `<line x1="${P}" y1="${W}" x2="${P + W}" y2="0" stroke="#ddd"/>` +
    `<text x="${P + W / 2}" y="${W + 22}" text-anchor="middle" font-size="11">fraction left-saturated</text>` +
    `<text x="10" y="${W / 2}" font-size="11" transform="rotate(-90 10 ${W / 2})" text-anchor="middle">fraction right-saturated</text>`;
  for (const [x, y, k] of points) {
    const c = document.createElementNS(ns, "circle");
    c.setAttribute("cx", P + x * W); c.setAttribute("cy", W - y * W); c.setAttribute("r", 2.2);
    c.setAttribute("fill", colours[k]); c.setAttribute("fill-opacity", 0.6);
    svg.appendChild(c);
  }
  const div = document.createElement("div");
  div.className = "scatter";
  div.innerHTML = `<div>${title}</div>`;
  div.appendChild(svg);
  return div;
}

function saturation() {
  const S = D.saturation, out = document.getElementById("saturation");
  const colours = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd"];
  const gated = D.header.cell !== "rnn";
  document.getElementById("saturation-note").textContent = gated
    ? `Per unit, the fraction of the time each gate is left-saturated (< ${S.left_below}) against right-saturated (> ${S.right_above}), as in Karpathy et al.'s Figure 3.`
    : `The tanh cell has no gates: per unit, the fraction of the time h < ${S.left_below} against h > ${S.right_above}; and the distribution of |h|.`;
  for (const layer of S.layers) {
    const names = Object.keys(layer.gates), points = [];
    names.forEach((g, k) => layer.gates[g].left.forEach((x, u) => points.push([x, layer.gates[g].right[u], k])));
    const key = names.map((g, k) => `<span style="background:${colours[k]}"></span>${g}`).join("");
    const div = scatter(points, colours, `layer ${layer.layer} <span class=key>${key}</span>`);
    out.appendChild(div);
    const hist = document.createElement("div");
    hist.className = "scatter";
    const max = Math.max(...layer.abs_h_hist);
    hist.innerHTML = `<div>layer ${layer.layer}: |h| (${fixed(100 * layer.frac_abs_h_saturated, 1)}% above 0.9)</div>` +
      `<svg width="240" height="130">` + layer.abs_h_hist.map((v, i) =>
        `<rect x="${i * 12}" y="${110 - 100 * v / max}" width="11" height="${100 * v / max}" fill="#888"/>`).join("") +
      `<text x="0" y="126" font-size="11">0</text><text x="228" y="126" font-size="11">1</text></svg>`;
    out.appendChild(hist);
  }
}

function gradients() {
  const G = D.gradients, out = document.getElementById("gradients");
  const note = document.getElementById("gradients-note");
  if (!G) { note.textContent = "The text is too short for a window."; return; }
  note.textContent = `How far back the loss reaches: the norm of \u2202\u2113_T/\u2202h_t (and \u2202\u2113_T/\u2202c_t for the LSTM) ` +
    `against the distance T \u2212 t, for \u2113_T the loss at the last character of a window of ${G.window}, averaged ` +
    `over ${G.windows} windows of this text, on a log scale: the trained model (solid) and the same architecture at ` +
    `step 0, from the run's seed (dashed). One colour per layer.`;
  const W = 560, Hh = 260, P = 46, ns = "http://www.w3.org/2000/svg";
  const lines = [];
  for (const [when, dash] of [["trained", ""], ["init", "5,4"]])
    for (const [name, layers] of Object.entries(G[when].grad))
      layers.forEach((c, l) => lines.push({c: c.map(v => Math.log10(Math.max(v, 1e-30))), dash, l, name, when}));
  const lo = Math.min(...lines.map(s => Math.min(...s.c))), hi = Math.max(...lines.map(s => Math.max(...s.c)));
  const span = Math.max(hi - lo, 1e-9), n = G.window;
  const X = d => P + W * d / Math.max(1, n - 1), Y = v => 10 + Hh * (1 - (v - lo) / span);
  const colours = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd"];
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", W + P + 160); svg.setAttribute("height", Hh + 50); svg.id = "gradient-curves";
  let body = `<rect x="${P}" y="10" width="${W}" height="${Hh}" fill="none" stroke="#999"/>` +
    `<text x="${P + W / 2}" y="${Hh + 44}" text-anchor="middle" font-size="11">distance T \u2212 t (characters)</text>` +
    `<text x="${P - 4}" y="16" text-anchor="end" font-size="10">1e${hi.toFixed(1)}</text>` +
    `<text x="${P - 4}" y="${Hh + 10}" text-anchor="end" font-size="10">1e${lo.toFixed(1)}</text>` +
    `<text x="${P}" y="${Hh + 26}" font-size="10">0</text><text x="${P + W}" y="${Hh + 26}" font-size="10" text-anchor="end">${n - 1}</text>`;
  lines.forEach((s, k) => {
    const pts = s.c.map((v, d) => `${X(d).toFixed(1)},${Y(v).toFixed(1)}`).join(" ");
    const colour = colours[s.l % 4];
    body += `<polyline class="gradient-line" points="${pts}" fill="none" stroke="${colour}" stroke-width="1.4" ` +
      `stroke-dasharray="${s.dash}" stroke-opacity="${s.name === "c" ? 0.5 : 1}"/>`;
    if (s.when === "trained") body += `<text x="${P + W + 8}" y="${24 + 14 * k}" font-size="11" fill="${colour}">` +
      `${s.name === "c" ? "c" : "h"} layer ${s.l}</text>`;
  });
  svg.innerHTML = body;
  out.appendChild(svg);
  const table = document.getElementById("gradient-factors");
  table.insertRow().innerHTML = "<th>layer</th><th>per-step factor ||\u2202s_t/\u2202s_{t\u22121}||, trained / step 0</th>" +
    "<th>spectral radius of W_hh's blocks, trained / step 0</th>";
  G.trained.spectral_radius.forEach((radii, l) => {
    const row = table.insertRow();
    const init = G.init.spectral_radius[l];
    row.innerHTML = "<td></td><td></td><td></td>";
    row.cells[0].textContent = l;
    row.cells[1].textContent = `${G.trained.jacobian[l].toFixed(3)} / ${G.init.jacobian[l].toFixed(3)}`;
    row.cells[2].textContent = Object.keys(radii).map(k => `${k} ${radii[k].toFixed(3)} / ${init[k].toFixed(3)}`).join(", ");
  });
  const foot = table.insertRow();
  foot.innerHTML = `<td colspan=3 class=muted>The per-step factor is the spectral norm of the state-to-state Jacobian ` +
    `(s = h, or (h, c) for the LSTM; the input from below held fixed), by ${G.power_steps} power iterations on ` +
    `J<sup>T</sup>J (a lower bound that converges to it), averaged over the windows' steps.</td>`;
}

header();
surprise();
cells();
saturation();
gradients();
document.body.dataset.ready = "1";
</script>
</body>
</html>
"""


def render(data, acts):
    """The page for visualize.analyse's data and its (N, U) int8 activations."""
    payload = dict(data, activations=base64.b64encode(acts.tobytes()).decode("ascii"))
    head, tail = PAGE.split("__DATA__")  # split, not replace: the text itself may hold the marker
    return head.replace("__TITLE__", html_text(data["header"]["checkpoint"])) + script_json(payload) + tail
