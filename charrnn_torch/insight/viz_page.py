"""The page ``visualize.py``'s numbers are shown on: one self-contained HTML file (inline CSS and
JS, the data embedded as JSON, no requests), drawn in the browser from that data."""
import base64
import json

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

<div id="tip"></div>
<script id="data" type="application/json">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const text = D.text, N = text.length, U = D.units.length;
const acts = new Int8Array(Uint8Array.from(atob(D.activations), c => c.charCodeAt(0)).buffer);

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
    ["validation loss", D.header.val_loss == null ? "n/a" : D.header.val_loss.toFixed(4)], ["cell", D.header.cell],
    ["size", `${D.header.num_layers} x ${D.header.hidden_size} (${D.header.parameters.toLocaleString()} parameters)`],
    ["text", D.header.source], ...(D.header.corpus ? [["trained on", D.header.corpus]] : [])];
  const table = document.getElementById("header");
  for (const [k, v] of rows) table.insertRow().innerHTML = `<th>${k}</th><td></td>`;
  rows.forEach(([k, v], i) => { table.rows[i].cells[1].textContent = v; });
}

function surprise() {
  const S = D.surprise, spans = fillText(document.getElementById("surprise-text"), N);
  document.getElementById("mean-bits").textContent = D.header.mean_bits.toFixed(3);
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
      html += `${S.bits[t - 1].toFixed(2)} bits, rank ${S.rank[t - 1]}<ol class="guesses">`;
      S.top_ids[t - 1].forEach((id, k) => {
        html += `<li class="guess">${escape(label(D.vocab[id]))}: ${(100 * S.top_probs[t - 1][k]).toFixed(1)}%</li>`;
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
    row.innerHTML = `<td>${name}</td><td>${b.state} layer ${b.layer} unit ${b.unit}</td><td>${b.corr.toFixed(3)}</td>` +
      `<td class=muted>${f.best_per_layer.map(e => `${e.state}${e.layer}:${e.unit} (${e.corr.toFixed(2)})`).join(", ")}</td>`;
    row.addEventListener("click", () => {
      group.value = D.groups.findIndex(g => g[0] === b.state && g[1] === b.layer);
      index.value = b.unit;
      pick();
    });
    const h = document.createElement("p");
    h.innerHTML = `<b>${name}</b>: ${b.state} layer ${b.layer} unit ${b.unit}, correlation ${b.corr.toFixed(3)}`;
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
    hist.innerHTML = `<div>layer ${layer.layer}: |h| (${(100 * layer.frac_abs_h_saturated).toFixed(1)}% above 0.9)</div>` +
      `<svg width="240" height="130">` + layer.abs_h_hist.map((v, i) =>
        `<rect x="${i * 12}" y="${110 - 100 * v / max}" width="11" height="${100 * v / max}" fill="#888"/>`).join("") +
      `<text x="0" y="126" font-size="11">0</text><text x="228" y="126" font-size="11">1</text></svg>`;
    out.appendChild(hist);
  }
}

header();
surprise();
cells();
saturation();
document.body.dataset.ready = "1";
</script>
</body>
</html>
"""


def render(data, acts):
    """The page for visualize.analyse's data and its (N, U) int8 activations."""
    payload = dict(data, activations=base64.b64encode(acts.tobytes()).decode("ascii"))
    blob = json.dumps(payload, separators=(",", ":"), ensure_ascii=True)
    blob = blob.replace("</", "<\\/")  # the text may contain "</script>"
    head, tail = PAGE.split("__DATA__")  # split, not replace: the text itself may hold the marker
    return head.replace("__TITLE__", _html_escape(data["header"]["checkpoint"])) + blob + tail


def _html_escape(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
