"""`charrnn serve`: one model, loaded once, sampled and scored over HTTP (Starlette on uvicorn: the
[serve] extra).

    POST /sample  {prime, length, temperature, top_k, top_p, seed, stream}  -> {"text", "seed"},
                  or server-sent events ("prime", "text" as it is drawn, then "done") with
                  "stream": true or Accept: text/event-stream
    POST /score   {text}  -> {"nats", "bits", "unit", "count", "chars"}: nats per symbol (unit: char,
                  byte or token) over count predictions; bits per character of text over the
                  chars they spell (per byte for a data.vocab=bytes model), as --score prints them
    GET /health   the checkpoint, its step, the vocabulary size, the device, the queue
    GET /         a page that samples and scores through the two POST routes

A request's defaults are `charrnn sample`'s, and its seed draws the same text as `charrnn sample
--seed`: the same generator, seeded the same way, in the same sample.generate. A request without a
seed gets a fresh one, returned with the text so that the text can be drawn again.

Sampling is synchronous torch code: it runs in a worker thread, one request at a time (there is one
model), while the event loop keeps answering. At most Limits.queue requests are admitted at once,
running or waiting; one more is answered 429 at once rather than left to wait without bound. Every
refusal is a 4xx with {"error": one line}; an unexpected failure is a 500 with its one line, and
the server goes on.
"""
import asyncio
import difflib
import ipaddress
import json
import math
import re
import secrets
import socket
import sys
import threading
from dataclasses import dataclass

import anyio
import torch
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.routing import Route

from ..errors import UserError, one_line
from ..insight import server_page
from ..sampling import sample
from ..training.config import SEED_MAX

SAMPLE_KEYS = ("prime", "length", "temperature", "top_k", "top_p", "seed", "stream")
SCORE_KEYS = ("text",)
TOP_K_MAX = 2**31 - 1
ROUTES = "GET /, GET /health, POST /sample, POST /score"
# A request is one flat object. Nesting is refused past this depth before the parser runs, whatever
# the interpreter's recursion limit (torch.compile raises it, and a deep enough body would then parse).
MAX_JSON_DEPTH = 32


@dataclass(frozen=True)
class Limits:
    max_length: int  # characters generated per request, and in its prime
    max_body: int  # bytes in a request's body
    queue: int  # requests admitted at once, running and waiting


@dataclass(frozen=True)
class Served:
    """The model and what the routes say about it."""
    model: torch.nn.Module
    vocab: object
    checkpoint: str  # the file it was loaded from
    step: object  # the checkpoint's step (None when it has none)
    defaults: dict  # `charrnn sample`'s: length, temperature, top_k, top_p
    default_prime: str


class Refused(Exception):
    """A request answered with a 4xx status and a one-line reason."""

    def __init__(self, status, reason):
        super().__init__(reason)
        self.status = status


class _Stopped(Exception):
    """Raised in the sampling thread when its stream's reader has gone."""


# ---------------------------------------------------------------- reading a request

async def read_json(request, limit):
    """The request's body as a JSON object; a Refused for anything else."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise Refused(415, f"send the body as JSON, with Content-Type: application/json (got {kind or 'none'})")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise Refused(413, f"the request body is {int(declared):,} bytes, over {limit:,}, the most this server "
                           f"takes (its --max-body-kb)")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise Refused(413, f"the request body is over {limit:,} bytes, the most this server takes (its "
                               f"--max-body-kb)")
    return parse_object(bytes(body))


def _no_constant(name):
    raise ValueError(f"{name} is not JSON")


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def nesting_depth(text):
    """How deep text's arrays and objects nest, outside its strings."""
    depth = deepest = 0
    for bracket in re.findall(r"[\[\]{}]", _JSON_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def parse_object(body):
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused(400, "the body is not UTF-8 text") from None
    if nesting_depth(text) > MAX_JSON_DEPTH:
        raise Refused(400, f"the body nests arrays or objects deeper than {MAX_JSON_DEPTH} levels: a request is one "
                           f"flat JSON object")
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:
        raise Refused(400, f"the body is not JSON: {one_line(e)[:200]}") from None
    if not isinstance(value, dict):
        raise Refused(400, f"the body must be a JSON object, got {_json_type(value)}")
    return value


def _json_type(value):
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array"}
    return "null" if value is None else names[type(value)]


def _show(value):
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= 40 else text[:37] + "..."


def check_keys(body, allowed):
    for key in body:
        if key not in allowed:
            near = [k for k in allowed if k.startswith(key)] or difflib.get_close_matches(key, allowed, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise Refused(400, f"unknown key {_show(key)}; {hint}the keys are {', '.join(allowed)}")


def _integer(body, key, lo, hi, why=""):
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise Refused(400, f"{key} must be an integer, got {_show(value)}")
    if not lo <= value <= hi:
        raise Refused(400, f"{key} must be in [{lo}, {hi}]{why}, got {value}")
    return value


def _number(body, key, ok, rule):
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Refused(400, f"{key} must be a number, got {_show(value)}")
    if not (math.isfinite(value) and ok(value)):  # 1e999 reads as inf
        raise Refused(400, f"{key} must be {rule}, got {_show(value)}")
    return float(value)


def sample_request(body, served, limits):
    """A /sample body, checked, with every value filled in: prime, length, temperature, top_k, top_p,
    seed (drawn when absent) and stream."""
    check_keys(body, SAMPLE_KEYS)
    r = dict(served.defaults, prime=served.default_prime, seed=None, stream=False)
    r.update(body)
    for key, kind, name in (("prime", str, "a string"), ("stream", bool, "a boolean")):
        if not isinstance(r[key], kind):
            raise Refused(400, f"{key} must be {name}, got {_show(r[key])}")
    r["length"] = _integer(r, "length", 0, limits.max_length, " (this server's --max-length)")
    if len(r["prime"]) > limits.max_length:  # the prime runs as one window: its memory grows with it
        raise Refused(400, f"prime is {len(r['prime']):,} characters; this server takes at most "
                           f"{limits.max_length:,} (its --max-length)")
    r["temperature"] = _number(r, "temperature", lambda t: t > 0, "> 0")
    r["top_k"] = _integer(r, "top_k", 0, TOP_K_MAX)
    r["top_p"] = _number(r, "top_p", lambda p: 0 < p <= 1, "in (0, 1]")
    r["seed"] = secrets.randbelow(SEED_MAX + 1) if r["seed"] is None else _integer(r, "seed", 0, SEED_MAX)
    sample.check_prime(served.vocab, r["prime"])  # a UserError: 400
    return r


def score_request(body, served):
    check_keys(body, SCORE_KEYS)
    if "text" not in body:
        raise Refused(400, "the body needs a \"text\" to score")
    text = body["text"]
    if not isinstance(text, str):
        raise Refused(400, f"text must be a string, got {_show(text)}")
    bad = served.vocab.unknown(text)
    if bad:
        listed = ", ".join(repr(c) for c in bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise Refused(400, f"text has {len(bad)} character{'s' if len(bad) > 1 else ''} not in the vocabulary: "
                           f"{listed}")
    return text


# ---------------------------------------------------------------- the queue and the model's thread

class Queue:
    """At most `depth` requests admitted at once; the model runs one of them at a time, in a worker
    thread. Only the event loop's thread touches `busy`."""

    def __init__(self, depth):
        self.depth, self.busy = depth, 0
        self.model = anyio.CapacityLimiter(1)
        self.tasks = set()  # the streams' sampling tasks, kept until done

    def enter(self):
        if self.busy >= self.depth:
            raise Refused(429, f"busy: {self.busy} requests are being answered or waiting, this server's "
                               f"--queue; try again")
        self.busy += 1

    def finished(self, task):
        self.tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a stream whose reader left ends in _Stopped, and that is no error

    async def run(self, fn):
        """fn() in the model's thread; the request entered() before, and leaves when fn is done."""
        try:
            return await anyio.to_thread.run_sync(fn, limiter=self.model)
        finally:
            self.busy -= 1


def draw(served, r, on_text=None):
    """The text (prime included) for a checked /sample request, as `charrnn sample --seed` draws it."""
    sampling = sample.Sampling(r["temperature"], r["top_k"], r["top_p"], seed=r["seed"])
    return sample.generate(served.model, served.vocab, r["prime"], r["length"], sampling, on_text=on_text)


def event(name, data):
    """One server-sent event; its data is JSON, so newlines in the text cannot end it early."""
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def stream(served, queue, r):
    """The sampling started now, in its own task (it holds the request's place in the queue until it
    ends, whether or not anyone reads), and the events that report it: "prime" (the prime and the
    seed), "text" with each new piece, then "done" with the whole text and the seed, or "error"."""
    loop, chunks, stop, end = asyncio.get_running_loop(), asyncio.Queue(), threading.Event(), object()

    def on_text(text):
        if stop.is_set():
            raise _Stopped()
        if text:  # a byte-mode model's character can take several steps
            loop.call_soon_threadsafe(chunks.put_nowait, text)

    def work():
        try:
            return draw(served, r, on_text)
        finally:
            loop.call_soon_threadsafe(chunks.put_nowait, end)

    task = asyncio.ensure_future(queue.run(work))
    queue.tasks.add(task)
    task.add_done_callback(queue.finished)

    async def events():
        try:
            yield event("prime", {"text": r["prime"], "seed": r["seed"]})
            item = None
            while item is not end:
                parts = [await chunks.get()]
                while not chunks.empty():  # what came while the last event was sent: one event
                    parts.append(chunks.get_nowait())
                item = parts.pop() if parts[-1] is end else None
                if parts:
                    yield event("text", {"text": "".join(parts)})
            yield event("done", {"text": await task, "seed": r["seed"]})
        except Exception as e:  # sampling failed: the stream says so, the server goes on
            yield event("error", {"error": one_line(e)})
        finally:
            stop.set()  # the reader has gone (or the stream is over): the thread stops at its next character
    return events()


# ---------------------------------------------------------------- the routes

def _error(status, reason, headers=None):
    return JSONResponse({"error": one_line(reason)}, status_code=status, headers=headers)


def answered(route):
    """route(request) with every failure answered: a Refused or a UserError as a 4xx with its one
    line, anything else as a 500 (and one line on stderr); the server goes on."""
    async def answer(request):
        try:
            return await route(request)
        except Refused as e:
            return _error(e.status, e, {"Retry-After": "1"} if e.status == 429 else None)
        except UserError as e:
            return _error(400, e)
        except Exception as e:
            print(f"error: {request.method} {request.url.path}: {one_line(e)}", file=sys.stderr, flush=True)
            return _error(500, f"the server failed to answer: {one_line(e)}")
    return answer


def wants_stream(request, r):
    return r["stream"] or "text/event-stream" in request.headers.get("accept", "")


def health(served, queue, limits):
    model = served.model
    return {"checkpoint": served.checkpoint, "step": served.step, "vocab_size": len(served.vocab),
            "vocab": served.vocab.mode, "cell": model.cell, "num_layers": model.num_layers,
            "hidden_size": model.hidden_size, "impl": model.impl,
            "parameters": sum(p.numel() for p in model.parameters()),
            "device": str(next(model.parameters()).device),
            "defaults": dict(served.defaults, prime=served.default_prime),
            "limits": {"max_length": limits.max_length, "max_body": limits.max_body, "queue": limits.queue},
            "busy": queue.busy}


def make_app(served, limits):
    """The Starlette app that serves `served` within `limits`."""
    queue = Queue(limits.queue)

    async def sample_route(request):
        r = sample_request(await read_json(request, limits.max_body), served, limits)
        queue.enter()
        if wants_stream(request, r):
            return StreamingResponse(stream(served, queue, r), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-store"})
        return JSONResponse({"text": await queue.run(lambda: draw(served, r)), "seed": r["seed"]})

    async def score_route(request):
        text = score_request(await read_json(request, limits.max_body), served)
        queue.enter()
        got = await queue.run(lambda: sample.score(served.model, served.vocab, text))
        return JSONResponse({"nats": got["loss"], "bits": got["bpc"], "unit": got["unit"], "count": got["count"],
                             "chars": got["chars"]})

    async def health_route(request):
        return JSONResponse(health(served, queue, limits))

    async def page_route(request):
        return HTMLResponse(server_page.render(health(served, queue, limits)))

    async def not_routed(request, exc):
        what = "no such route" if exc.status_code == 404 else f"{request.method} is not allowed here"
        return _error(exc.status_code, f"{what}: {request.method} {request.url.path}; the routes are {ROUTES}")

    routes = [Route("/", answered(page_route)), Route("/health", answered(health_route)),
              Route("/sample", answered(sample_route), methods=["POST"]),
              Route("/score", answered(score_route), methods=["POST"])]
    app = Starlette(routes=routes, exception_handlers={HTTPException: not_routed})
    app.state.queue = queue
    return app


# ---------------------------------------------------------------- listening

def is_loopback(ip):
    """Whether an address (as getaddrinfo gives it) is this machine's only: 127.0.0.0/8 or ::1."""
    return ipaddress.ip_address(ip.split("%")[0]).is_loopback


def listen(host, port):
    """A socket listening on host:port (port 0: a free one), or a UserError saying why not. A host
    that is not a loopback address gets one warning on stderr: the server has no authentication."""
    if not host.strip():
        raise UserError("--host is empty: give an address to listen on, e.g. 127.0.0.1")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                            flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as e:
        raise UserError(f"--host {host}: {e.strerror or one_line(e)}") from None
    if not is_loopback(address[0]):
        print(f"warning: --host {host} is not a loopback address: any machine that reaches this one can use the "
              f"model (no authentication, no TLS)", file=sys.stderr, flush=True)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart need not wait out TIME_WAIT
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host} port {port}: {e.strerror or one_line(e)}") from None
    return sock


def url_of(sock):
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def server_for(app):
    """The uvicorn server of app: server_for(app).run(sockets=[sock]) serves until Ctrl-C, then shuts
    down gracefully (open streams get a few seconds) and the KeyboardInterrupt reaches the caller.
    Its own log is warnings only: the routes' answers speak for themselves."""
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=5)
    return uvicorn.Server(config)
