"""Proves `charrnn serve` (tools/serve.py, wired by cli.serve_setup) against a real server on
127.0.0.1, through a real HTTP client (httpx):

- POST /sample with a seed gives the text `charrnn sample --seed` prints, defaults included (the
  same prime, length and knobs when none is given), and a request without a seed is told the one
  it got, which draws the same text again;
- streaming (server-sent events, by "stream": true or Accept: text/event-stream) sends characters
  while the model is still drawing the next ones, and adds up to the text of the same seed; a
  reader that leaves stops the sampling;
- `--impl fused_cpp` serves through the compiled sampling loop: the CLI's text for the same seed;
- POST /score gives sample.score's nats and bits; GET /health names the checkpoint, its step, the
  vocabulary size, the impl and the device;
- every bad request (not JSON, NaN, nested past MAX_JSON_DEPTH whatever the recursion limit, not
  an object, unknown keys, wrong types, values out of range, characters outside the vocabulary, too
  long, too big, the wrong content type, no such route or method) is a 4xx with {"error": one
  line}, and the server answers after all of them;
- a full queue answers 429 at once, and the server still answers /health meanwhile;
- a load test (8 concurrent clients, 200 requests) has no failure, and every text is its seed's;
- the command itself: bad flags and checkpoints are one `error:` line and exit 2, another host
  than 127.0.0.1 prints one warning, Ctrl-C stops it with one line (exit 130), even mid-stream;
  without the [serve] extra it says which package is missing;
- the page at GET / (headless Chromium, marked browser) samples and scores through the server,
  and shows a checkpoint path full of markup as text.

Every server here listens on 127.0.0.1 on a free port and is stopped by the test that started it;
every request and wait has a timeout.
"""
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from charrnn_torch import cli
from charrnn_torch.data.vocab import Vocab
from charrnn_torch.sampling import sample
from charrnn_torch.training import checkpoint
from conftest import ROOT, chromium, watch
from test_compiled import kernels  # noqa: F401  the fixture


def _require_serve():
    try:
        import httpx, starlette, uvicorn  # noqa: F401, E401
    except ImportError as e:
        if os.environ.get("CHARRNN_REQUIRE_SERVE") == "1":
            pytest.fail(f"{e.name} is not installed (pip install -e '.[dev]')")
        pytest.skip(f"{e.name} is not installed (pip install -e '.[serve]')")


_require_serve()
import httpx  # noqa: E402

from charrnn_torch.tools import serve, serve_load  # noqa: E402

V_CHARS = "abcdefghi \n"  # V = 11
H, L = 7, 2
TIMEOUT = 20.0  # seconds: any one request, wait or join
ODD_DIR = "run<b>&\"x'</script><i>y"  # a checkpoint path full of markup (two directories), shown as text by the page


@pytest.fixture(scope="module")
def ckpt_path(tmp_path_factory):
    """A random 2-layer GRU saved as training saves one, weights doubled so the text varies."""
    d = tmp_path_factory.mktemp("serve") / ODD_DIR
    d.mkdir(parents=True)
    vocab = Vocab(sorted(V_CHARS))
    torch.manual_seed(36)
    model = checkpoint.CharRNN(len(vocab), H, num_layers=L, cell="gru", impl="fused")
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2)
    checkpoint.save({"format": checkpoint.FORMAT, "model": model.state_dict(), "model_args": model.model_args(),
                     "vocab": list(vocab.chars), "vocab_mode": "chars", "step": 7, "last_val": 1.5}, d / "best.pt")
    return d


@contextlib.contextmanager
def running(app, sock):
    """app served on sock in a background thread; its URL, then the server stopped."""
    server = serve.server_for(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + TIMEOUT
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "the server did not start"
    try:
        yield serve.url_of(sock)
    finally:
        server.should_exit = True
        thread.join(TIMEOUT)
        assert not thread.is_alive(), "the server did not stop"


def client(url):
    return httpx.Client(base_url=url, timeout=TIMEOUT, trust_env=False)


@pytest.fixture(scope="module")
def url(ckpt_path):
    """The server `charrnn serve --checkpoint RUN --port 0` sets up (its queue deep enough for the load test)."""
    args = cli.parse("serve", ["--checkpoint", str(ckpt_path), "--port", "0", "--max-length", "2000",
                               "--max-body-kb", "4", "--queue", "8"])
    app, sock, _ = cli.serve_setup(args)
    with running(app, sock) as u:
        yield u


@pytest.fixture
def http(url):
    with client(url) as c:
        yield c


def cli_sample(capsys, ckpt_path, *flags):
    capsys.readouterr()
    assert cli.main(["sample", "--checkpoint", str(ckpt_path), *map(str, flags)]) == 0
    return capsys.readouterr().out


# ---------------------------------------------------------------- sampling as the CLI samples

def test_a_seed_gives_the_clis_text(http, capsys, ckpt_path):
    body = {"prime": "ab c", "length": 120, "temperature": 0.9, "top_k": 5, "top_p": 0.95, "seed": 11}
    r = http.post("/sample", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["seed"] == 11
    want = cli_sample(capsys, ckpt_path, "--prime", "ab c", "--length", 120, "--temperature", 0.9, "--top-k", 5,
                      "--top-p", 0.95, "--seed", 11)
    assert r.json()["text"] + "\n" == want
    other = http.post("/sample", json=dict(body, seed=12)).json()["text"]
    assert other != r.json()["text"]  # the seed matters: the comparison above can fail


def test_the_defaults_are_the_clis(http, capsys, ckpt_path):
    text = http.post("/sample", json={"seed": 3}).json()["text"]
    assert text + "\n" == cli_sample(capsys, ckpt_path, "--seed", 3)
    assert len(text) == 1 + cli.SAMPLE_DEFAULTS["length"] and text[0] == "\n"


def test_impl_fused_cpp_serves_through_the_compiled_loop_the_clis_text(capsys, ckpt_path, kernels):  # noqa: F811
    app, sock, what = cli.serve_setup(cli.parse("serve", ["--checkpoint", str(ckpt_path), "--port", "0",
                                                          "--impl", "fused_cpp"]))
    assert "gru 2x7 fused_cpp" in what
    body = {"prime": "ab c", "length": 150, "seed": 4}
    with running(app, sock) as u, client(u) as http:
        text = http.post("/sample", json=body).json()["text"]
        assert http.get("/health").json()["impl"] == "fused_cpp"
    assert text + "\n" == cli_sample(capsys, ckpt_path, "--prime", "ab c", "--length", 150, "--seed", 4,
                                     "--impl", "fused_cpp")
    assert text + "\n" == cli_sample(capsys, ckpt_path, "--prime", "ab c", "--length", 150, "--seed", 4)  # a GRU's


def test_without_a_seed_the_answer_names_one_that_draws_it_again(http):
    first = http.post("/sample", json={"length": 80}).json()
    again = http.post("/sample", json={"length": 80, "seed": first["seed"]}).json()
    assert again == first


# ---------------------------------------------------------------- streaming

def read_events(response):
    """(name, data) of each server-sent event of a streaming response, as they come."""
    name = None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            yield name, json.loads(line[6:])


class Gated(torch.nn.Module):
    """A model whose forward number `at` waits for `gate`, and which counts its forwards (those
    made while one is held apart) and sleeps `delay` seconds in each: a test can hold sampling in
    the middle."""

    def __init__(self, model, at=None, delay=0.0):
        super().__init__()
        self.inner, self.at, self.delay, self.calls, self.while_held = model, at, delay, 0, 0
        self.cell, self.num_layers, self.hidden_size, self.impl = model.cell, model.num_layers, model.hidden_size, model.impl
        self.reached, self.gate = threading.Event(), threading.Event()

    def forward(self, x, h=None):
        self.calls += 1
        self.while_held += self.reached.is_set() and not self.gate.is_set()
        if self.calls == self.at:
            self.reached.set()
            self.gate.wait(TIMEOUT)
        time.sleep(self.delay)
        return self.inner(x, h)


@contextlib.contextmanager
def gated_server(ckpt_path, queue=4, **gate):
    model, vocab, _ = checkpoint.load_model(ckpt_path)
    gated = Gated(model, **gate)
    served = serve.Served(model=gated, vocab=vocab, checkpoint="m.pt", step=7, default_prime="\n",
                          defaults={"length": 50, "temperature": 1.0, "top_k": 0, "top_p": 1.0})
    app = serve.make_app(served, serve.Limits(max_length=5000, max_body=4096, queue=queue))
    try:
        with running(app, serve.listen("127.0.0.1", 0)) as u, client(u) as c:
            yield gated, c
    finally:
        gated.gate.set()


def post(http, path, body):
    """POST on a connection of its own (for requests made from other threads)."""
    with client(str(http.base_url)) as own:
        return own.post(path, json=body)


def test_streaming_sends_text_while_sampling_goes_on(ckpt_path):
    with gated_server(ckpt_path, at=21) as (gated, http):  # forward 21 draws the 21st character
        body = {"prime": "hi", "length": 100, "seed": 4}
        with http.stream("POST", "/sample", json=dict(body, stream=True)) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            events, got = read_events(r), ""
            assert next(events) == ("prime", {"text": "hi", "seed": 4})
            while len(got) < 20:
                name, data = next(events)
                assert name == "text"
                got += data["text"]
            assert not gated.gate.is_set() and len(got) == 20  # 20 characters out, the 21st not yet drawn
            gated.gate.set()
            rest = list(events)
        assert [n for n, _ in rest[:-1]] == ["text"] * (len(rest) - 1) and rest[-1][0] == "done"
        text = "hi" + got + "".join(d["text"] for _, d in rest[:-1])
        assert rest[-1][1] == {"text": text, "seed": 4}
        gated.at = None
        assert http.post("/sample", json=body).json()["text"] == text


def test_accept_event_stream_asks_for_a_stream(http):
    with http.stream("POST", "/sample", json={"length": 30, "seed": 2}, headers={"Accept": "text/event-stream"}) as r:
        events = list(read_events(r))
    assert events[-1][0] == "done"
    assert events[-1][1]["text"] == http.post("/sample", json={"length": 30, "seed": 2}).json()["text"]


def test_a_reader_that_leaves_stops_the_sampling(ckpt_path):
    with gated_server(ckpt_path, delay=0.002) as (gated, http):  # 5000 characters: 10 s, unless stopped
        with http.stream("POST", "/sample", json={"length": 5000, "stream": True}) as r:
            events = read_events(r)
            next(events), next(events)  # the prime, then the first text: sampling is under way
        deadline = time.monotonic() + TIMEOUT
        while http.get("/health").json()["busy"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert http.get("/health").json()["busy"] == 0
        assert gated.calls < 2500, gated.calls
        assert http.post("/sample", json={"length": 5}).status_code == 200


def test_a_byte_mode_model_samples_and_streams_any_text(tmp_path):
    torch.manual_seed(2)
    model = checkpoint.CharRNN(256, H, cell="lstm", impl="fused")
    checkpoint.save({"format": checkpoint.FORMAT, "model": model.state_dict(), "model_args": model.model_args(),
                     "vocab": [chr(b) for b in range(256)], "vocab_mode": "bytes", "step": 3}, tmp_path / "b.pt")
    app, sock, what = cli.serve_setup(cli.parse("serve", ["--checkpoint", str(tmp_path / "b.pt"), "--port", "0"]))
    assert "256 symbols" in what
    body = {"prime": "caf\u00e9 \u2603", "length": 60, "seed": 8}
    with running(app, sock) as u, client(u) as http:
        text = http.post("/sample", json=body).json()["text"]
        with http.stream("POST", "/sample", json=dict(body, stream=True)) as r:
            events = list(read_events(r))
        assert http.post("/score", json={"text": "na\u00efve \u2603"}).json()["unit"] == "byte"
    assert text.startswith("caf\u00e9 \u2603") and events[-1] == ("done", {"text": text, "seed": 8})
    assert all(d["text"] for name, d in events if name == "text")


# ---------------------------------------------------------------- scoring and health

def test_score_is_sample_score(http, ckpt_path):
    text = "a bad fig\nhid a cage\n"
    r = http.post("/score", json={"text": text})
    assert r.status_code == 200, r.text
    model, vocab, _ = checkpoint.load_model(ckpt_path)
    want = sample.score(model, vocab, text)
    assert r.json() == {"nats": want["loss"], "bits": want["bpc"], "unit": "char", "count": len(text) - 1,
                        "chars": len(text) - 1}


def test_the_page_holds_the_path_as_text_not_markup(http, ckpt_path):
    page = http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "</script><i>" not in page.text and "<b>" not in page.text
    assert "<title>charrnn serve: " + str(ckpt_path / "best.pt").replace("&", "&amp;").replace("<", "&lt;").replace(
        ">", "&gt;").replace('"', "&quot;").replace("'", "&#x27;") + "</title>" in page.text


def test_health_names_the_model(http, ckpt_path):
    h = http.get("/health").json()
    assert h["checkpoint"] == str(ckpt_path / "best.pt") and h["step"] == 7
    assert (h["vocab_size"], h["device"], h["cell"], h["num_layers"], h["hidden_size"], h["impl"]) == \
        (11, "cpu", "gru", L, H, "fused")
    assert h["defaults"] == {"length": 500, "temperature": 0.8, "top_k": 0, "top_p": 1.0, "prime": "\n"}
    assert h["limits"] == {"max_length": 2000, "max_body": 4096, "queue": 8} and h["busy"] == 0


# ---------------------------------------------------------------- every bad request is answered

JSON = {"Content-Type": "application/json"}
BAD = [  # (method, path, body bytes, headers, status, words of the reason)
    ("POST", "/sample", b"{", JSON, 400, "not JSON"),
    ("POST", "/sample", b'{"temperature": NaN}', JSON, 400, "NaN is not JSON"),
    ("POST", "/sample", b"[" * 1500 + b"]" * 1500, JSON, 400, "deeper than 32 levels"),
    ("POST", "/sample", b'{"prime": ' + b"[" * 33 + b"]" * 33 + b"}", JSON, 400, "deeper than 32 levels"),
    ("POST", "/sample", b'{"prime": "' + b"[" * 40 + b'"}', JSON, 400, "not in the vocabulary"),  # brackets in a string
    ("POST", "/sample", b'{"prime": "\xff"}', JSON, 400, "not UTF-8"),
    ("POST", "/sample", b"[1, 2]", JSON, 400, "must be a JSON object, got an array"),
    ("POST", "/sample", b'{"temp": 1}', JSON, 400, "unknown key \"temp\"; did you mean 'temperature'?"),
    ("POST", "/sample", b'{"length": "9"}', JSON, 400, "length must be an integer, got \"9\""),
    ("POST", "/sample", b'{"length": 9.5}', JSON, 400, "length must be an integer, got 9.5"),
    ("POST", "/sample", b'{"seed": true}', JSON, 400, "seed must be an integer, got true"),
    ("POST", "/sample", b'{"prime": 5}', JSON, 400, "prime must be a string, got 5"),
    ("POST", "/sample", b'{"stream": "yes"}', JSON, 400, "stream must be a boolean"),
    ("POST", "/sample", b'{"temperature": "hot"}', JSON, 400, "temperature must be a number"),
    ("POST", "/sample", b'{"temperature": 0}', JSON, 400, "temperature must be > 0, got 0"),
    ("POST", "/sample", b'{"temperature": 1e999}', JSON, 400, "temperature must be > 0, got Infinity"),
    ("POST", "/sample", b'{"top_p": 1.5}', JSON, 400, "top_p must be in (0, 1], got 1.5"),
    ("POST", "/sample", b'{"top_k": -1}', JSON, 400, "top_k must be in [0, 2147483647], got -1"),
    ("POST", "/sample", b'{"seed": -3}', JSON, 400, "seed must be in [0, "),
    ("POST", "/sample", b'{"length": 2001}', JSON, 400, "length must be in [0, 2000] (this server's --max-length)"),
    ("POST", "/sample", b'{"prime": "abZ"}', JSON, 400, "prime character not in the vocabulary: 'Z'"),
    ("POST", "/sample", b'{"prime": ""}', JSON, 400, "prime text is empty"),
    ("POST", "/sample", b'{"prime": "' + b"a" * 2001 + b'"}', JSON, 400, "prime is 2,001 characters; this server takes at "
                                                                        "most 2,000 (its --max-length)"),
    ("POST", "/sample", b'{"prime": "' + b"a" * 5000 + b'"}', JSON, 413, "over 4,096, the most this server takes"),
    ("POST", "/sample", b'{}', {"Content-Type": "text/plain"}, 415, "Content-Type: application/json"),
    ("POST", "/sample", b'{}', {}, 415, "Content-Type: application/json (got none)"),
    ("POST", "/score", b'{"txt": "ab"}', JSON, 400, "did you mean 'text'?"),
    ("POST", "/score", b'{}', JSON, 400, "needs a \"text\""),
    ("POST", "/score", b'{"text": ["ab"]}', JSON, 400, "text must be a string"),
    ("POST", "/score", b'{"text": "a"}', JSON, 400, "nothing to score"),
    ("POST", "/score", '{"text": "abc\u00e9Q"}'.encode(), JSON, 400, "2 characters not in the vocabulary: 'Q', '\u00e9'"),
    ("GET", "/sample", b"", {}, 405, "GET is not allowed here"),
    ("POST", "/health", b"{}", JSON, 405, "POST is not allowed here"),
    ("GET", "/nowhere", b"", {}, 404, "no such route: GET /nowhere"),
]


def test_every_bad_request_is_a_4xx_with_one_line(http):
    for method, path, body, headers, status, words in BAD:
        r = http.request(method, path, content=body, headers=headers)
        assert r.status_code == status, (body[:60], r.status_code, r.text)
        assert r.headers["content-type"] == "application/json", r.headers
        reason = r.json()["error"]
        assert words in reason and "\n" not in reason and len(r.json()) == 1, (body[:60], reason)
    chunked = http.post("/score", content=iter([b'{"text": "', b"a" * 4096, b'"}']), headers=JSON)  # no length given
    assert chunked.status_code == 413 and "over 4,096 bytes, the most" in chunked.json()["error"]
    assert http.get("/health").status_code == 200
    assert http.post("/sample", json={"length": 10}).status_code == 200


def test_a_full_queue_answers_429_at_once(ckpt_path):
    with gated_server(ckpt_path, queue=2, at=1) as (gated, http), ThreadPoolExecutor(2) as pool:
        first = pool.submit(post, http, "/sample", {"seed": 1})
        assert gated.reached.wait(TIMEOUT)  # the first holds the model
        second = pool.submit(post, http, "/sample", {"seed": 2})
        deadline = time.monotonic() + TIMEOUT
        while http.get("/health").json()["busy"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)  # the second waits for the model; /health is answered meanwhile
        time.sleep(0.3)  # time enough for the second to begin, were the model not one request's at a time
        assert gated.while_held == 0
        r = http.post("/score", json={"text": "abc"})
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["error"].startswith("busy: 2 requests are being answered or waiting")
        gated.gate.set()
        assert first.result(TIMEOUT).status_code == 200 and second.result(TIMEOUT).status_code == 200
        assert http.get("/health").json()["busy"] == 0


# ---------------------------------------------------------------- under load

def test_load_8_clients_200_requests_no_failure(url, ckpt_path):
    model, vocab, _ = checkpoint.load_model(ckpt_path)
    want = {}
    for seed in range(serve_load.SEEDS):
        want[seed] = sample.generate(model, vocab, "\n", 20, sample.Sampling(temperature=0.8, seed=seed))
    out = serve_load.run_load(url, clients=8, requests=200, length=20, timeout=TIMEOUT)
    assert out["failures"] == []
    assert len(out["texts"]) == 200 and all(t == want[i % serve_load.SEEDS] for i, t in out["texts"].items())
    assert len(out["latencies"]) == 200
    assert serve_load.summary(out)["failures"] == 0


def test_mismatched_texts_are_failures():
    assert serve_load.mismatches({0: "a", 10: "a", 20: "b", 1: "c"}) == [(20, "seed 0: a different text from "
                                                                              "request 0's")]


# ---------------------------------------------------------------- the command

def test_bad_flags_and_checkpoints_are_one_error_line(capsys, tmp_path, ckpt_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    cases = [(["--port", "70000"], "--port must be <= 65535"), (["--queue", "0"], "--queue must be >= 1"),
             (["--max-length", "x"], "--max-length must be an integer"), (["--hots", "x"], "unrecognized arguments"),
             (["--checkpoint", str(tmp_path / "junk.pt")], "junk.pt"),
             (["--checkpoint", str(tmp_path / "none")], "none")]
    for argv, words in cases:
        if "--checkpoint" not in argv:
            argv = ["--checkpoint", str(ckpt_path)] + argv
        assert cli.main(["serve", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and words in err, err


def test_a_port_in_use_is_one_error_line(capsys, ckpt_path):
    taken = serve.listen("127.0.0.1", 0)
    try:
        port = taken.getsockname()[1]
        assert cli.main(["serve", "--checkpoint", str(ckpt_path), "--port", str(port)]) == 2
        assert capsys.readouterr().err == f"error: cannot listen on 127.0.0.1 port {port}: Address already in use\n"
    finally:
        taken.close()


def test_another_host_is_warned_about(capsys, ckpt_path):
    # 192.0.2.1 (TEST-NET-1) is on no interface here: the bind fails, nothing is sent anywhere.
    assert cli.main(["serve", "--checkpoint", str(ckpt_path), "--host", "192.0.2.1", "--port", "0"]) == 2
    warning, error = capsys.readouterr().err.splitlines()
    assert warning == ("warning: --host 192.0.2.1 is not a loopback address: any machine that reaches this one can "
                       "use the model (no authentication, no TLS)")
    assert error.startswith("error: cannot listen on 192.0.2.1 port 0: ")
    assert cli.main(["serve", "--checkpoint", str(ckpt_path), "--host", ""]) == 2  # (no name looked up: no DNS)
    assert capsys.readouterr().err == "error: --host is empty: give an address to listen on, e.g. 127.0.0.1\n"
    assert [h for h in ("127.0.0.1", "127.8.0.1", "::1", "0.0.0.0", "::", "192.0.2.1", "fe80::1%eth0")
            if serve.is_loopback(h)] == ["127.0.0.1", "127.8.0.1", "::1"]


def test_localhost_is_not_warned_about(capsys, ckpt_path):
    for host in ("localhost", "::1"):
        sock = serve.listen(host, 0)
        sock.close()
        assert capsys.readouterr().err == ""


def test_without_the_extra_it_names_the_missing_package(capsys, monkeypatch, ckpt_path):
    import charrnn_torch.tools
    monkeypatch.delattr(charrnn_torch.tools, "serve")
    monkeypatch.delitem(sys.modules, "charrnn_torch.tools.serve")
    for name in [m for m in sys.modules if m.split(".")[0] == "starlette"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if never installed
    # 192.0.2.1 is on no interface: were the import to succeed, the bind would fail rather than serve.
    assert cli.main(["serve", "--checkpoint", str(ckpt_path), "--host", "192.0.2.1"]) == 2
    assert capsys.readouterr().err == ("error: the server and its load test need starlette, not installed: "
                                       "pip install -e '.[serve]'\n")


def test_ctrl_c_stops_it_with_one_line_even_mid_stream(ckpt_path):
    p = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "serve.py"), "--checkpoint", str(ckpt_path),
                          "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                         env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        line = p.stdout.readline()
        assert line.startswith(f"serving {ckpt_path / 'best.pt'} (step 7, gru 2x7 fused, 11 symbols, cpu) at http://127.0.0.1:")
        base = line.split(" at ")[1].split(";")[0]
        with client(base) as http, http.stream("POST", "/sample", json={"length": 2000, "stream": True}) as r:
            next(read_events(r))
            p.send_signal(signal.SIGINT)
            out, err = p.communicate(timeout=TIMEOUT)
    finally:
        p.kill()
    assert (p.returncode, out, err) == (130, "", "interrupted\n")


# ---------------------------------------------------------------- the page, in a browser

@pytest.mark.browser
def test_the_page_samples_and_scores_through_the_server(url, http, ckpt_path):
    with chromium({"width": 1100, "height": 900}) as ctx:
        page = ctx.new_page()
        seen = watch(page)
        page.goto(url + "/")
        page.wait_for_selector("body[data-ready='1']", timeout=TIMEOUT * 1000)
        header = page.inner_text("#header")
        assert str(ckpt_path / "best.pt") in header and page.locator("#header b, #header i").count() == 0
        for box, value in (("#prime", "ab"), ("#length", "150"), ("#seed", "9"), ("#top_k", "4")):
            page.fill(box, value)
        page.click("#generate")
        page.wait_for_selector("body[data-done='1']", timeout=TIMEOUT * 1000)
        want = http.post("/sample", json={"prime": "ab", "length": 150, "seed": 9, "top_k": 4}).json()["text"]
        assert page.inner_text("#out") == want and "150 characters, seed 9" in page.inner_text("#status")
        page.fill("#text", "a bad fig\n")
        page.click("#score")
        page.wait_for_selector("body[data-scored='1']", timeout=TIMEOUT * 1000)
        got = http.post("/score", json={"text": "a bad fig\n"}).json()
        assert page.inner_text("#score-result") == f"{got['nats']:.4f} nats/char, {got['bits']:.4f} bits/char, over 9 chars"
        page.fill("#prime", "aZ")
        page.click("#generate")
        page.wait_for_selector("body[data-done='2']", timeout=TIMEOUT * 1000)
        assert page.inner_text("#status") == "error: prime character not in the vocabulary: 'Z'"
    # The one error logged: the refused prime, as Chromium reports any 4xx.
    assert seen["errors"] == ["Failed to load resource: the server responded with a status of 400 (Bad Request)"]
    assert {u.split("/")[2] for u in seen["requests"]} == {url.split("/")[2]}  # the server, nothing else
