"""The playground ``charrnn export --format html`` writes: one self-contained HTML file (inline CSS
and JS, the weights embedded as base64, no requests) that runs the model in the page.

Its forward pass is plain JavaScript over typed arrays, the equations of model.py: the tanh cell,
the LSTM (gates stacked i, f, g, o in the rows of W_xh, W_hh and b_h) and the GRU (r, z, n, with
b_hn apart, since r multiplies it), any number of layers; layer 0's W_xh x is column x of W_xh, as
model.py gathers it. Sampling is sample.py's, step for step: temperature, top-k, then top-p
(filter_probs), then the inverse CDF (pick) of a uniform draw from torch's CPU generator, redone
here: MT19937 seeded as torch.Generator().manual_seed(seed) seeds it (the seed's low 32 bits), and
each float64 uniform built from two of its 32-bit outputs as torch.rand builds one. So a seed gives
the text `charrnn sample --seed` gives for the same prime and settings. Only a near-tie can part
them: a float32 model's logits differ here in their last bits (this forward runs in float64), and a
draw that falls between the two rounding's cumulative probabilities picks another character.

``window.charrnn`` is a small API for scripts and the browser tests: ``probsAfter(prime)`` (the
next character's probabilities after prime, from the zero state), ``filtered(prime, temperature,
topK, topP)`` (the same through the sampling filters), ``generate({prime,
temperature, topK, topP, length, seed})`` and ``uniforms(seed, n)`` (the generator's first n draws).
"""
from .embed import html_text, script_json

PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>charrnn_torch playground: __TITLE__</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.2em auto; max-width: 60em; color: #222; padding: 0 1em; }
h1 { font-size: 1.35em; margin-bottom: .3em; }
#header td, #header th { padding: 1px 12px 1px 0; text-align: left; font-weight: normal; }
#header th { color: #777; }
#controls { display: flex; flex-wrap: wrap; gap: 8px 16px; align-items: end; margin: 1em 0 .6em; }
#controls label { display: flex; flex-direction: column; font-size: 12px; color: #555; }
#controls input { font: 14px ui-monospace, monospace; padding: 3px 5px; }
#prime { width: 16em; } .num { width: 5em; }
button { font-size: 14px; padding: 5px 16px; cursor: pointer; }
#out { font: 13px/1.55 ui-monospace, monospace; white-space: pre-wrap; border: 1px solid #ccc; padding: 10px;
       min-height: 14em; max-height: 32em; overflow-y: auto; background: #fcfcfa; }
#out .prime { color: #888; } #out .dropped { color: #c00; text-decoration: line-through; }
#out .gen:hover { background: #ffe9a8; }
#status, #note { color: #666; font-size: 13px; min-height: 1.3em; } #note { color: #a40; }
#tip { position: fixed; display: none; background: #fff; border: 1px solid #888; padding: 5px 9px;
       font: 12px/1.45 ui-monospace, monospace; box-shadow: 2px 2px 6px rgba(0,0,0,.2); pointer-events: none; }
#tip ol { margin: 2px 0 0; padding-left: 1.6em; } #tip .picked { font-weight: bold; }
details { margin-top: 1.2em; color: #444; } pre.eq { font-size: 12.5px; background: #f4f4f4; padding: 6px 10px; }
</style>
</head>
<body>
<h1>charrnn_torch playground</h1>
<table id="header"></table>
<div id="controls">
  <label>prime <input id="prime" type="text"></label>
  <label>temperature <input id="temperature" class="num" type="number" min="0.05" step="0.05" value="0.8"></label>
  <label>top-k (0: all) <input id="topk" class="num" type="number" min="0" step="1" value="0"></label>
  <label>top-p (1: all) <input id="topp" class="num" type="number" min="0.01" max="1" step="0.05" value="1"></label>
  <label>length <input id="length" class="num" type="number" min="1" step="100" value="500"></label>
  <label>seed <input id="seed" class="num" type="number" min="0" step="1" value="1"></label>
  <button id="generate">Generate</button>
</div>
<div id="note"></div>
<div id="out"></div>
<div id="status"></div>
<details open><summary>How this page runs the model</summary>
<p>Everything runs here, in JavaScript on typed arrays, from the weights embedded in this file: no
request is made. The equations are those of <code>charrnn_torch/model.py</code>, for each layer
(layer 0 reads the character as a one-hot x, so W<sub>xh</sub>x is a column of W<sub>xh</sub>; the
layers above read h of the layer below):</p>
<pre class="eq" id="equations"></pre>
<p>Then p = softmax(y / temperature) over the top-k characters, cut to the most likely ones whose
probability adds up to top-p, and the next character is the first whose cumulative probability
exceeds a uniform draw from torch's own generator (MT19937 as <code>torch.rand</code> uses it): the
same seed gives the same text as <code>charrnn sample --seed</code> with the same prime and settings
(a float32 model's logits differ here in their last bits, so a draw that falls right on a boundary
can, very rarely, pick another character). Prime characters outside the vocabulary are shown struck
through, dropped and counted, as <code>charrnn sample</code> drops them; a prime with none left is
refused. Hover a generated character for the five characters the model rated most likely at that
point.</p>
</details>
<div id="tip"></div>
<script id="data" type="application/json">__DATA__</script>
<script id="weights" type="text/plain">__WEIGHTS__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const HD = D.header, V = D.vocab.length, H = HD.hidden_size, L = HD.num_layers, CELL = HD.cell;
const G = {rnn: 1, lstm: 4, gru: 3}[CELL], GH = G * H;
const STOI = new Map(D.vocab.map((c, i) => [c, i]));

const EQUATIONS = {
  rnn: "h_t = tanh(W_xh x_t + W_hh h_{t-1} + b_h)",
  lstm: "i, f, g, o = sigmoid, sigmoid, tanh, sigmoid of (W_xh x_t + W_hh h_{t-1} + b_h)   (gates stacked i, f, g, o)\n" +
        "c_t = f * c_{t-1} + i * g\nh_t = o * tanh(c_t)",
  gru: "r = sigmoid(W_xr x_t + W_hr h_{t-1} + b_r),  z = sigmoid(W_xz x_t + W_hz h_{t-1} + b_z)   (stacked r, z, n)\n" +
       "n = tanh(W_xn x_t + b_xn + r * (W_hn h_{t-1} + b_hn))\nh_t = (1 - z) * n + z * h_{t-1}",
};

// ------------------------------------------------------------------ the weights

function halfToFloat(u) {  // IEEE 754 binary16 -> number
  const s = u & 0x8000 ? -1 : 1, e = (u >> 10) & 0x1f, m = u & 0x3ff;
  if (e === 0) return s * m * Math.pow(2, -24);
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * Math.pow(2, e - 15);
}

function decodeWeights() {  // base64, little-endian float32 (or float16) -> one Float32Array
  const bin = atob(document.getElementById("weights").textContent.trim());
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  if (HD.weights === "float32") return new Float32Array(bytes.buffer);
  const u16 = new Uint16Array(bytes.buffer), out = new Float32Array(u16.length);
  for (let i = 0; i < u16.length; i++) out[i] = halfToFloat(u16[i]);
  return out;
}

const ALL = decodeWeights(), T = {};
for (const t of D.tensors) T[t.name] = ALL.subarray(t.offset, t.offset + t.shape.reduce((a, b) => a * b, 1));

const LAYERS = [];
for (let l = 0; l < L; l++) {
  const Wx = T[`cells.${l}.W_xh`], bh = T[`cells.${l}.b_h`];
  const layer = {Wx, Wh: T[`cells.${l}.W_hh`], bh, bhn: T[`cells.${l}.b_hn`] || null};
  if (l === 0) {  // one-hot input: W_xh x + b_h is a row of this (V, G*H) table
    layer.table = new Float64Array(V * GH);
    for (let v = 0; v < V; v++) for (let j = 0; j < GH; j++) layer.table[v * GH + j] = Wx[j * V + v] + bh[j];
  }
  LAYERS.push(layer);
}
const WHY = T["W_hy"], BY = T["b_y"];

// ------------------------------------------------------------------ the forward pass

function matvec(W, x, rows, cols, out) {  // out = W x, W row-major (rows, cols)
  let i = 0;
  for (; i + 3 < rows; i += 4) {  // four rows at a time: each x[k] is read once for the four
    const a = i * cols, b = a + cols, c = b + cols, d = c + cols;
    let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (let k = 0; k < cols; k++) {
      const v = x[k];
      s0 += W[a + k] * v; s1 += W[b + k] * v; s2 += W[c + k] * v; s3 += W[d + k] * v;
    }
    out[i] = s0; out[i + 1] = s1; out[i + 2] = s2; out[i + 3] = s3;
  }
  for (; i < rows; i++) {
    const o = i * cols;
    let s = 0;
    for (let k = 0; k < cols; k++) s += W[o + k] * x[k];
    out[i] = s;
  }
}

function sigmoid(a) { return 1 / (1 + Math.exp(-a)); }

function newState() {
  const z = () => Array.from({length: L}, () => new Float64Array(H));
  return {h: z(), c: CELL === "lstm" ? z() : null};
}

const AX = new Float64Array(GH), AH = new Float64Array(GH), LOGITS = new Float64Array(V);

function cellUpdate(l, P, st) {  // AX = W_xh x + b_h, AH = W_hh h: the new state of layer l, in place
  const h = st.h[l];
  if (CELL === "rnn") {
    for (let j = 0; j < H; j++) h[j] = Math.tanh(AX[j] + AH[j]);
  } else if (CELL === "lstm") {
    const c = st.c[l];
    for (let j = 0; j < H; j++) {
      const i = sigmoid(AX[j] + AH[j]), f = sigmoid(AX[H + j] + AH[H + j]);
      const g = Math.tanh(AX[2 * H + j] + AH[2 * H + j]), o = sigmoid(AX[3 * H + j] + AH[3 * H + j]);
      c[j] = f * c[j] + i * g;
      h[j] = o * Math.tanh(c[j]);
    }
  } else {
    for (let j = 0; j < H; j++) {
      const r = sigmoid(AX[j] + AH[j]), z = sigmoid(AX[H + j] + AH[H + j]);
      const n = Math.tanh(AX[2 * H + j] + r * (AH[2 * H + j] + P.bhn[j]));
      h[j] = (1 - z) * n + z * h[j];
    }
  }
}

function step(st, id) {  // one character through every layer: the state moves on, LOGITS holds y
  for (let l = 0; l < L; l++) {
    const P = LAYERS[l];
    if (l === 0) AX.set(P.table.subarray(id * GH, (id + 1) * GH));
    else {
      matvec(P.Wx, st.h[l - 1], GH, H, AX);
      for (let j = 0; j < GH; j++) AX[j] += P.bh[j];
    }
    matvec(P.Wh, st.h[l], GH, H, AH);
    cellUpdate(l, P, st);
  }
  matvec(WHY, st.h[L - 1], V, H, LOGITS);
  for (let v = 0; v < V; v++) LOGITS[v] += BY[v];
  return LOGITS;
}

// ------------------------------------------------------------------ sampling

function probabilities(logits, temperature, topK, topP) {  // sample.filter_probs, operation for operation
  const m = Math.max(...logits), z = Array.from(logits, a => (a - m) / temperature);  // <= 0: never overflows
  if (topK > 0 && topK < V) {
    const kth = z.slice().sort((a, b) => b - a)[topK - 1];
    for (let v = 0; v < V; v++) if (z[v] < kth) z[v] = -Infinity;
  }
  const top = Math.max(...z), e = z.map(a => Math.exp(a - top)), s = e.reduce((a, b) => a + b, 0);  // softmax
  let p = e.map(a => a / s);
  if (topP < 1) {  // keep a character while the mass ranked above it is short of topP
    const order = Array.from(p.keys()).sort((a, b) => p[b] - p[a]), keep = new Array(V).fill(false);
    let cum = 0;
    for (const v of order) { cum += p[v]; keep[v] = cum - p[v] < topP; }
    const kept = p.map((a, v) => keep[v] ? a : 0), t = kept.reduce((a, b) => a + b, 0);
    p = kept.map(a => a / t);
  }
  return p;
}

function pick(p, u) {  // sample.pick: the first id whose cumulative probability exceeds u
  let cdf = 0;
  for (let v = 0; v < V; v++) { cdf += p[v]; if (cdf > u) return v; }
  return V - 1;
}

function torchRand(seed) {  // torch.Generator().manual_seed(seed), then torch.rand(1, dtype=float64) per call
  const mt = new Uint32Array(624);
  mt[0] = Number(BigInt(seed) & 0xffffffffn);  // torch's MT19937 takes the seed's low 32 bits
  for (let i = 1; i < 624; i++) mt[i] = Math.imul(1812433253, mt[i - 1] ^ (mt[i - 1] >>> 30)) + i;
  let next = 624;
  function u32() {
    if (next === 624) {
      for (let i = 0; i < 624; i++) {
        const y = (mt[i] & 0x80000000) | (mt[(i + 1) % 624] & 0x7fffffff);
        mt[i] = mt[(i + 397) % 624] ^ (y >>> 1) ^ (y & 1 ? 0x9908b0df : 0);
      }
      next = 0;
    }
    let y = mt[next++];
    y ^= y >>> 11; y ^= (y << 7) & 0x9d2c5680; y ^= (y << 15) & 0xefc60000; y ^= y >>> 18;
    return y >>> 0;
  }
  // random64() = first << 32 | second; its low 53 bits times 2^-53, as torch's uniform_real does
  return () => { const hi = u32() & 0x1fffff; return (hi * 4294967296 + u32()) / 9007199254740992; };
}

function top5(p) {
  return Array.from(p.keys()).sort((a, b) => p[b] - p[a]).slice(0, 5).map(v => [D.vocab[v], p[v]]);
}

function splitPrime(prime) {  // the characters kept, and those dropped (not in the vocabulary)
  const chars = Array.from(prime), kept = chars.filter(c => STOI.has(c)), dropped = chars.filter(c => !STOI.has(c));
  return {chars, kept, dropped, refused: !kept.length};
}

function primed(kept) {  // the state after the prime, and the logits it predicts next
  const st = newState();
  let logits = null;
  for (const c of kept) logits = step(st, STOI.get(c));
  return {st, logits: Float64Array.from(logits)};
}

function sampler(opts) {  // next() -> [character, its probability, top-5 of the distribution it was drawn from]
  const prime = splitPrime(opts.prime), rng = torchRand(opts.seed);
  if (prime.refused) return {prime, next: null};  // as charrnn sample: no prime left, nothing to condition on
  let {st, logits} = primed(prime.kept);
  return {prime, next() {
    const p = probabilities(logits, opts.temperature, opts.topK, opts.topP), id = pick(p, rng());
    logits = step(st, id);
    return [D.vocab[id], p[id], top5(p)];
  }};
}

window.charrnn = {
  header: HD, vocab: D.vocab,
  probsAfter(prime) { return Array.from(probabilities(primed(splitPrime(prime).kept).logits, 1, 0, 1)); },
  filtered(prime, temperature, topK, topP) {
    return Array.from(probabilities(primed(splitPrime(prime).kept).logits, temperature, topK, topP));
  },
  generate(opts) {
    const o = Object.assign({prime: D.default_prime, temperature: 1, topK: 0, topP: 1, length: 100, seed: 1}, opts);
    const s = sampler(o);
    let text = "";
    for (let i = 0; s.next && i < o.length; i++) text += s.next()[0];
    return {text, dropped: s.prime.dropped.length, refused: s.prime.refused};
  },
  uniforms(seed, n) { const r = torchRand(seed); return Array.from({length: n}, r); },
};

// ------------------------------------------------------------------ the page

function label(ch) { return ch === "\n" ? "\\n" : ch === " " ? "\u2423" : ch === "\t" ? "\\t" : ch; }
function pct(p) { return (100 * p).toFixed(p < 0.001 ? 3 : 1) + "%"; }

function header() {
  const rows = [["checkpoint", HD.checkpoint], ["step", HD.step == null ? "n/a" : HD.step],
    ["cell", CELL === "rnn" ? "rnn (the tanh cell)" : CELL],
    ["size", `${HD.num_layers} x ${HD.hidden_size}, ${HD.parameters.toLocaleString("en")} parameters, ` +
             `vocabulary of ${HD.vocab_size}, weights in ${HD.weights}`],
    ["validation loss", HD.val_loss == null ? "n/a" : `${HD.val_loss.toFixed(4)} nats/char`]];
  const table = document.getElementById("header");
  for (const [k, v] of rows) { const r = table.insertRow(); r.innerHTML = "<th></th><td></td>"; r.cells[0].textContent = k; r.cells[1].textContent = v; }
  document.getElementById("equations").textContent = EQUATIONS[CELL] + "\ny_t = W_hy h_t + b_y   (the top layer's h)";
  document.getElementById("prime").value = D.default_prime === "\n" ? "" : D.default_prime;
}

function showPrime(out, prime) {
  const frag = document.createDocumentFragment();
  for (const c of prime.chars) {
    const s = document.createElement("span");
    s.className = STOI.has(c) ? "prime" : "dropped";
    s.textContent = c;
    frag.appendChild(s);
  }
  out.appendChild(frag);
  const counts = new Map();
  for (const c of prime.dropped) counts.set(c, (counts.get(c) || 0) + 1);
  const list = Array.from(counts, ([c, n]) => `"${c}"` + (n > 1 ? ` x${n}` : "")).join(", ");
  document.getElementById("note").textContent = (prime.dropped.length
    ? `${prime.dropped.length} prime character${prime.dropped.length > 1 ? "s" : ""} not in the vocabulary, dropped: ${list}. ` : "") +
    (prime.refused ? "Nothing of the prime is in the vocabulary: there is nothing to start from." : "");
}

let run = 0, TOPS = [];

function controls() {
  const num = id => Number(document.getElementById(id).value);
  const seedBox = document.getElementById("seed");
  if (!/^\d+$/.test(seedBox.value.trim())) seedBox.value = Math.floor(Math.random() * 2 ** 31);
  const prime = document.getElementById("prime").value, topP = num("topp");
  return {prime: prime === "" ? D.default_prime : prime, temperature: Math.max(num("temperature"), 1e-3),
          topK: Math.max(0, Math.floor(num("topk"))), topP: topP > 0 && topP < 1 ? topP : 1,
          length: Math.max(1, Math.floor(num("length"))), seed: seedBox.value.trim()};
}

function generateClicked() {
  const opts = controls(), me = ++run, out = document.getElementById("out"), status = document.getElementById("status");
  out.textContent = "";
  TOPS = [];
  const s = sampler(opts);
  showPrime(out, s.prime);
  document.body.dataset.done = "";
  if (!s.next) { status.textContent = ""; document.body.dataset.done = String(me); return; }
  const t0 = performance.now();
  let n = 0;
  function pump() {  // 40 ms of sampling, then the page is drawn: the text streams in
    if (me !== run) return;
    const frag = document.createDocumentFragment(), until = performance.now() + 40;
    while (n < opts.length && performance.now() < until) {
      const [ch, p, top] = s.next(), span = document.createElement("span");
      span.className = "gen"; span.textContent = ch; span.dataset.i = n++;
      TOPS.push([p, top]); frag.appendChild(span);
    }
    out.appendChild(frag);
    out.scrollTop = out.scrollHeight;
    const secs = (performance.now() - t0) / 1000;
    status.textContent = `${n.toLocaleString("en")} of ${opts.length.toLocaleString("en")} characters, seed ${opts.seed}, ` +
      `${secs.toFixed(2)} s (${Math.round(n / Math.max(secs, 1e-6)).toLocaleString("en")} characters/s)`;
    if (n < opts.length) setTimeout(pump, 0);
    else document.body.dataset.done = String(me);
  }
  pump();
}

function hover() {
  const out = document.getElementById("out"), tip = document.getElementById("tip");
  out.addEventListener("mouseover", e => {
    if (!e.target.classList.contains("gen")) { tip.style.display = "none"; return; }
    const ch = e.target.textContent, [p, top] = TOPS[Number(e.target.dataset.i)];
    tip.innerHTML = "<div></div><ol></ol>";
    tip.firstChild.textContent = `sampled ${label(ch)} (${pct(p)}); the five most likely here:`;
    for (const [c, p] of top) {
      const li = document.createElement("li");
      li.className = "alt" + (c === ch ? " picked" : "");
      li.textContent = `${label(c)}: ${pct(p)}`;
      tip.lastChild.appendChild(li);
    }
    tip.style.display = "block";
    tip.style.left = (e.clientX + 14) + "px";
    tip.style.top = (e.clientY + 14) + "px";
  });
  out.addEventListener("mouseleave", () => { tip.style.display = "none"; });
}

header();
hover();
document.getElementById("generate").addEventListener("click", generateClicked);
document.body.dataset.ready = "1";
</script>
</body>
</html>
"""


def render(data, weights_b64):
    """The page for export.html_bytes's data and the base64 weights."""
    head, rest = PAGE.split("__DATA__")  # split, not replace: the vocabulary may hold the markers
    middle, tail = rest.split("__WEIGHTS__")
    title = html_text(data["header"]["checkpoint"])
    return head.replace("__TITLE__", title) + script_json(data) + middle + weights_b64 + tail
