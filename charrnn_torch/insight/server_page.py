"""The page `charrnn serve` answers GET / with: the playground's look, but the model stays in the
server. Generate posts to /sample with "stream": true and reads its server-sent events as they
come; Score posts to /score. The server's /health answer is embedded as JSON (every "<" escaped,
the title HTML-escaped), so nothing from the checkpoint is ever read as markup; the page writes
every text with textContent.
"""
import html
import json

PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<link rel="icon" href="data:,">
<title>charrnn serve: __TITLE__</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.2em auto; max-width: 60em; color: #222; padding: 0 1em; }
h1 { font-size: 1.35em; margin-bottom: .3em; } h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
#header td, #header th { padding: 1px 12px 1px 0; text-align: left; font-weight: normal; }
#header th { color: #777; }
.controls { display: flex; flex-wrap: wrap; gap: 8px 16px; align-items: end; margin: 1em 0 .6em; }
.controls label { display: flex; flex-direction: column; font-size: 12px; color: #555; }
.controls input { font: 14px ui-monospace, monospace; padding: 3px 5px; }
#prime { width: 16em; } .num { width: 5em; }
button { font-size: 14px; padding: 5px 16px; cursor: pointer; }
#out { font: 13px/1.55 ui-monospace, monospace; white-space: pre-wrap; border: 1px solid #ccc; padding: 10px;
       min-height: 14em; max-height: 32em; overflow-y: auto; background: #fcfcfa; overflow-wrap: anywhere; }
#out .prime { color: #888; }
#text { font: 13px ui-monospace, monospace; width: 100%; height: 6em; box-sizing: border-box; }
#status, #score-result { color: #666; font-size: 13px; min-height: 1.3em; } .error { color: #a40; }
</style>
</head>
<body>
<h1>charrnn serve</h1>
<table id="header"></table>
<div class="controls">
  <label>prime <input id="prime" type="text"></label>
  <label>temperature <input id="temperature" class="num" type="number" min="0.05" step="0.05"></label>
  <label>top-k (0: all) <input id="top_k" class="num" type="number" min="0" step="1"></label>
  <label>top-p <input id="top_p" class="num" type="number" min="0.01" max="1" step="0.05"></label>
  <label>length <input id="length" class="num" type="number" min="0" step="100"></label>
  <label>seed (empty: any) <input id="seed" class="num" type="number" min="0" step="1"></label>
  <button id="generate">Generate</button> <button id="stop" disabled>Stop</button>
</div>
<div id="out"></div>
<div id="status"></div>
<h2>Score a text</h2>
<textarea id="text" spellcheck="false"></textarea>
<div class="controls"><button id="score">Score</button></div>
<div id="score-result"></div>
<script id="data" type="application/json">__DATA__</script>
<script>
"use strict";
const HD = JSON.parse(document.getElementById("data").textContent);
const $ = id => document.getElementById(id);

function header() {
  const rows = [["checkpoint", HD.checkpoint], ["step", HD.step == null ? "n/a" : HD.step],
    ["model", `${HD.cell}, ${HD.num_layers} x ${HD.hidden_size}, ${HD.parameters.toLocaleString("en")} parameters, ` +
              `vocabulary of ${HD.vocab_size} (${HD.vocab}), on ${HD.device}`],
    ["limits", `${HD.limits.max_length.toLocaleString("en")} characters a request, ` +
               `${HD.limits.queue} requests at once`]];
  for (const [k, v] of rows) {
    const r = $("header").insertRow();
    r.insertCell().textContent = k; r.cells[0].className = "key"; r.insertCell().textContent = v;
  }
  for (const k of ["temperature", "top_k", "top_p", "length"]) $(k).value = HD.defaults[k];
  $("prime").placeholder = JSON.stringify(HD.defaults.prime);
}

function request() {  // the /sample body: what the boxes say; an empty box keeps the server's default
  const body = {stream: true};
  if ($("prime").value !== "") body.prime = $("prime").value;
  for (const k of ["temperature", "top_p"]) if ($(k).value !== "") body[k] = Number($(k).value);
  for (const k of ["top_k", "length", "seed"]) if ($(k).value !== "") body[k] = Number($(k).value);
  return body;
}

async function refused(response) {  // the server's one-line reason
  try { return (await response.json()).error; } catch (e) { return `HTTP ${response.status}`; }
}

function events(onEvent) {  // a parser of server-sent events, fed text as it arrives
  let buffer = "";
  return chunk => {
    buffer += chunk;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end); buffer = buffer.slice(end + 2);
      let name = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) name = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      onEvent(name, JSON.parse(data));
    }
  };
}

let controller = null, run = 0;

function show(out, cls, text) {
  const s = document.createElement("span");
  s.className = cls; s.textContent = text; out.appendChild(s);
  out.scrollTop = out.scrollHeight;
}

async function generate() {
  if (controller) controller.abort();
  const me = ++run, out = $("out"), status = $("status"), t0 = performance.now();
  controller = new AbortController();
  out.textContent = ""; status.className = ""; status.textContent = "sampling...";
  document.body.dataset.done = ""; $("stop").disabled = false;
  let n = 0, seed = null;
  const feed = events((name, d) => {
    if (name === "prime") { seed = d.seed; show(out, "prime", d.text); }
    else if (name === "text") { n += Array.from(d.text).length; show(out, "gen", d.text); }
    else if (name === "error") throw new Error(d.error);
    const secs = (performance.now() - t0) / 1000;
    status.textContent = `${n.toLocaleString("en")} characters, seed ${seed}, ${secs.toFixed(2)} s` +
      (name === "done" ? " (done)" : "");
  });
  try {
    const response = await fetch("/sample", {method: "POST", headers: {"Content-Type": "application/json"},
                                             body: JSON.stringify(request()), signal: controller.signal});
    if (!response.ok) throw new Error(await refused(response));
    const reader = response.body.getReader(), decoder = new TextDecoder();
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      feed(decoder.decode(value, {stream: true}));
    }
  } catch (e) {
    if (me === run) {
      status.className = "error";
      status.textContent = e.name === "AbortError" ? "stopped" : `error: ${e.message}`;
    }
  } finally {
    if (me === run) { $("stop").disabled = true; controller = null; document.body.dataset.done = String(me); }
  }
}

async function score() {
  const result = $("score-result");
  result.className = ""; result.textContent = "scoring..."; document.body.dataset.scored = "";
  try {
    const response = await fetch("/score", {method: "POST", headers: {"Content-Type": "application/json"},
                                            body: JSON.stringify({text: $("text").value})});
    if (!response.ok) throw new Error(await refused(response));
    const r = await response.json();
    result.textContent = `${r.nats.toFixed(4)} nats/${r.unit}, ${r.bits.toFixed(4)} bits/${r.unit === "token" ? "char" : r.unit}, ` +
      `over ${r.count.toLocaleString("en")} ${r.unit}s`;
  } catch (e) {
    result.className = "error"; result.textContent = `error: ${e.message}`;
  } finally {
    document.body.dataset.scored = "1";
  }
}

header();
$("generate").addEventListener("click", generate);
$("stop").addEventListener("click", () => controller && controller.abort());
$("score").addEventListener("click", score);
document.body.dataset.ready = "1";
</script>
</body>
</html>
"""


def render(header):
    """The page for a /health answer."""
    # No "<" at all inside the script element (a "</script>" or "<!--" in a path would end or bend it).
    blob = json.dumps(header, separators=(",", ":"), ensure_ascii=True).replace("<", "\\u003c")
    head, tail = PAGE.split("__DATA__")  # split, not replace: the checkpoint's path may hold the marker
    return head.replace("__TITLE__", html.escape(header["checkpoint"])) + blob + tail
