"""Proves the playground `charrnn export --format html` writes (playground.py) in a real browser,
headless Debian Chromium driven by Playwright, as test_browser.py drives the visualiser's page:

- its JavaScript forward pass is model.py's: after three different primes its next-character
  probabilities equal torch's to <= 1e-5, for the tanh cell, the LSTM and the GRU (1 and 2 layers),
  and with --half equal those of the model with its weights rounded to float16; with top-k 1 it
  generates torch's greedy text, so the state is carried as torch carries it;
- its uniform draws are torch's CPU generator's, bit for bit, and its temperature, top-k and top-p
  filter as sample.filter_probs does, so a seed gives the text `charrnn sample --seed` gives with
  the same prime and settings (three seeds, four settings, four models);
- Generate streams text of the asked length from the vocabulary into the page, the same text the
  page's API gives, and a seed gives the same text twice (another seed, another text);
- hovering a generated character shows the five likeliest characters at that point, most likely
  first; prime characters outside the vocabulary are shown, dropped and counted, and a prime with
  none left is refused;
- the header names the checkpoint, cell, size and validation loss; no console errors, no request
  beyond the file itself, and a screenshot that is not blank;
- a page whose checkpoint path holds `<!--<script>` and `</script>`, whose vocabulary holds < > &,
  and whose validation loss is NaN runs all the same: the path shown as it is, the loss as n/a.

Without /usr/bin/chromium or Playwright the tests skip, unless CHARRNN_REQUIRE_BROWSER=1 (.ci/run).
"""
import io

import pytest
import torch

from charrnn_torch.training import checkpoint
from charrnn_torch.sampling import sample
from charrnn_torch.cli import main
from charrnn_torch.data.vocab import Vocab
from conftest import chromium, watch
from test_export import H, V_CHARS, save_model

pytestmark = pytest.mark.browser
PRIMES = ["a", "bad cafe\n", "hi\nhe faced a big dice; "]  # in V_CHARS but ';', dropped
TOL = 1e-5
PAGES = {"rnn1": ("rnn", 1, False), "lstm2": ("lstm", 2, False), "gru2": ("gru", 2, False),
         "gru1": ("gru", 1, False), "lstm1": ("lstm", 1, False), "gru2-half": ("gru", 2, True)}


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    """name -> (checkpoint, page) for each of PAGES, written by the command."""
    d = tmp_path_factory.mktemp("playground")
    out = {}
    for name, (cell, L, half) in PAGES.items():
        ckpt = save_model(d / f"{name}.pt", cell, L)
        page = d / f"{name}.html"
        assert main(["export", "--checkpoint", str(ckpt), "--format", "html", "--out", str(page)]
                    + (["--half"] if half else [])) == 0
        out[name] = (ckpt, page)
    return out


@pytest.fixture(scope="module")
def browser():
    with chromium({"width": 1000, "height": 760}) as ctx:
        yield ctx


@pytest.fixture
def open_page(browser):
    """open_page(path) -> the page, loaded; on leaving the test, it must have logged no error and
    requested nothing but itself."""
    opened = []

    def open_(path):
        page = browser.new_page()
        seen = watch(page)
        page.goto(path.as_uri())
        page.wait_for_selector("body[data-ready='1']", timeout=30000)
        opened.append((page, seen, path))
        return page
    yield open_
    for page, seen, path in opened:
        assert seen["errors"] == [], seen["errors"]
        assert seen["requests"] == [path.as_uri()], seen["requests"]
        page.close()


def torch_probs(model, vocab, prime):
    kept = "".join(c for c in prime if c in vocab)
    with torch.no_grad():
        logits, _ = model(vocab.encode(kept)[None])
    return torch.softmax(logits[0, -1], -1)


@pytest.mark.parametrize("name", ["rnn1", "lstm2", "gru2", "lstm1", "gru1"])
def test_probabilities_equal_torch_after_three_primes(pages, open_page, name):
    ckpt, path = pages[name]
    page = open_page(path)
    model, vocab, _ = checkpoint.load_model(ckpt)
    for prime in PRIMES:
        got = torch.tensor(page.evaluate("p => window.charrnn.probsAfter(p)", prime), dtype=torch.float64)
        want = torch_probs(model, vocab, prime).double()
        assert float((got - want).abs().max()) <= TOL, (prime, float((got - want).abs().max()))


def test_half_page_equals_the_model_with_float16_weights(pages, open_page):
    ckpt, path = pages["gru2-half"]
    page = open_page(path)
    model, vocab, _ = checkpoint.load_model(ckpt)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    assert "float16" in page.inner_text("#header")
    for prime in PRIMES:
        got = torch.tensor(page.evaluate("p => window.charrnn.probsAfter(p)", prime), dtype=torch.float64)
        assert float((got - torch_probs(model, vocab, prime).double()).abs().max()) <= TOL, prime


@pytest.mark.parametrize("name", ["rnn1", "lstm2", "gru2"])
def test_top_k_1_generates_torchs_greedy_text(pages, open_page, name):
    ckpt, path = pages[name]
    page = open_page(path)
    model, vocab, _ = checkpoint.load_model(ckpt)
    got = page.evaluate("() => window.charrnn.generate({prime: 'bad cafe', topK: 1, length: 60, seed: 3}).text")
    assert "bad cafe" + got == sample.generate(model, vocab, "bad cafe", 60, sample.Sampling(greedy=True))


SEEDS = [0, 1, 7, 1337, 2**31 + 5, 2**40 + 3, 2**62]


def test_its_uniforms_are_torchs(pages, open_page):
    """The page's generator is torch's CPU generator: the same float64 draws, bit for bit, for
    seeds above 2**32 too (torch keeps their low 32 bits)."""
    page = open_page(pages["rnn1"][1])
    for seed in SEEDS:
        got = page.evaluate("([s, n]) => window.charrnn.uniforms(s, n)", [str(seed), 1500])  # past one 624-word refill
        g = torch.Generator().manual_seed(seed)
        want = [torch.rand(1, generator=g, dtype=torch.float64).item() for _ in range(1500)]
        assert got == want, seed


@pytest.mark.parametrize("name,settings", [
    ("lstm2", {"temperature": 1.0, "topK": 0, "topP": 1.0}),
    ("gru2", {"temperature": 0.8, "topK": 5, "topP": 1.0}),
    ("rnn1", {"temperature": 1.3, "topK": 0, "topP": 0.7}),
    ("gru1", {"temperature": 0.9, "topK": 6, "topP": 0.85}),
])
def test_a_seed_gives_the_text_charrnn_sample_gives(pages, open_page, capsys, name, settings):
    ckpt, path = pages[name]
    page = open_page(path)
    for seed in (1, 42, 2**33 + 9):
        got = page.evaluate("o => window.charrnn.generate(o).text",
                            {"prime": "bad cafe", "length": 300, "seed": str(seed), **settings})
        assert main(["sample", "--checkpoint", str(ckpt), "--prime", "bad cafe", "--length", "300", "--seed", str(seed),
                     "--temperature", str(settings["temperature"]), "--top-k", str(settings["topK"]),
                     "--top-p", str(settings["topP"])]) == 0
        assert capsys.readouterr().out == "bad cafe" + got + "\n", (name, seed)


def test_top_p_filters_as_sample_does(pages, open_page):
    """The page's distribution after a prime, through temperature, top-k and top-p, is
    sample.filter_probs' to float64 rounding: the same characters kept, the same mass on each."""
    ckpt, path = pages["lstm2"]
    page = open_page(path)
    model, vocab, _ = checkpoint.load_model(ckpt)
    with torch.no_grad():
        logits, _ = model(vocab.encode("bad cafe")[None])
    for t, k, top_p in ((1.0, 0, 0.5), (0.7, 4, 0.9), (2.0, 0, 0.3), (1.0, 3, 1.0)):
        want = sample.filter_probs(logits[:, -1], t, k, top_p)[0]
        got = torch.tensor(page.evaluate("([t, k, p]) => { const s = window.charrnn; return s.filtered('bad cafe', t, k, p); }",
                                         [t, k, top_p]), dtype=torch.float64)
        assert torch.equal(got > 0, want > 0) and float((got - want).abs().max()) <= TOL, (t, k, top_p)


def test_generate_gives_the_asked_length_from_the_vocabulary_and_a_seed_repeats(pages, open_page):
    page = open_page(pages["lstm2"][1])
    run = "o => window.charrnn.generate(o).text"
    a = page.evaluate(run, {"prime": "dice", "temperature": 1.0, "length": 400, "seed": 11})
    again = page.evaluate(run, {"prime": "dice", "temperature": 1.0, "length": 400, "seed": 11})
    other = page.evaluate(run, {"prime": "dice", "temperature": 1.0, "length": 400, "seed": 12})
    assert len(a) == 400 and set(a) <= set(V_CHARS)
    assert again == a and other != a
    k2 = page.evaluate(run, {"prime": "dice", "temperature": 1.0, "topK": 2, "length": 400, "seed": 11})
    assert k2 != a  # top-k changes what is drawn from the same uniforms


def _fill(page, prime, length, seed, temperature="1", topk="0"):
    for sel, value in (("#prime", prime), ("#length", str(length)), ("#seed", str(seed)),
                       ("#temperature", temperature), ("#topk", topk)):
        page.fill(sel, value)


def test_generate_streams_the_text_into_the_page(pages, open_page):
    page = open_page(pages["gru2"][1])
    n = 30000  # more than one 40 ms slice of sampling, even for a 2x7 model
    page.evaluate("""() => { window.appends = 0;
        new MutationObserver(r => { window.appends += r.length; }).observe(document.getElementById('out'),
                                                                           {childList: true}); }""")
    _fill(page, "fed", n, 5)
    page.click("#generate")
    page.wait_for_selector("body[data-done='1']", timeout=60000)
    shown = page.eval_on_selector_all("#out span.gen", "s => s.map(e => e.textContent).join('')")
    want = page.evaluate("o => window.charrnn.generate(o).text",
                         {"prime": "fed", "temperature": 1, "topK": 0, "length": n, "seed": 5})
    assert shown == want and len(shown) == n
    assert page.evaluate("() => window.appends") >= 1 + 2  # the prime, then the text in several pieces
    assert f"{n:,} of {n:,} characters" in page.inner_text("#status") and "characters/s" in page.inner_text("#status")


def test_hover_shows_the_five_likeliest_characters(pages, open_page):
    page = open_page(pages["rnn1"][1])
    _fill(page, "ace", 50, 2)
    page.click("#generate")
    page.wait_for_selector("body[data-done='1']")
    texts = page.locator("#out span.gen").all_inner_texts()
    span = page.locator("#out span.gen").nth(next(i for i in range(10, 50) if texts[i].strip()))  # one with ink
    span.hover()
    alts = page.locator("#tip li.alt").all_inner_texts()
    assert page.is_visible("#tip") and len(alts) == 5
    probs = [float(a.rsplit(": ", 1)[1].rstrip("%")) for a in alts]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 100.5
    picked = page.locator("#tip li.picked").all_inner_texts()
    label = {"\n": "\\n", " ": "\u2423"}.get(span.inner_text(), span.inner_text())
    assert all(p.startswith(label + ":") for p in picked)


def test_prime_outside_the_vocabulary_is_shown_dropped_and_counted(pages, open_page):
    page = open_page(pages["gru2"][1])
    _fill(page, "ab€c€d", 20, 1)
    page.click("#generate")
    page.wait_for_selector("body[data-done='1']")
    assert page.locator("#out span.dropped").all_inner_texts() == ["€", "€"]
    assert "".join(page.locator("#out span.prime").all_inner_texts()) == "abcd"
    assert '2 prime characters not in the vocabulary, dropped: "€" x2' in page.inner_text("#note")
    same = page.evaluate("() => [window.charrnn.probsAfter('ab€c€d'), window.charrnn.probsAfter('abcd')]")
    assert same[0] == same[1]
    _fill(page, "€!", 20, 1)
    page.click("#generate")
    page.wait_for_selector("body[data-done='2']")
    assert "Nothing of the prime is in the vocabulary" in page.inner_text("#note")
    assert page.locator("#out span.gen").count() == 0  # refused, as charrnn sample refuses it
    assert page.evaluate("() => window.charrnn.generate({prime: '€!'})") == {"text": "", "dropped": 2, "refused": True}


def test_header_and_screenshot(pages, open_page):
    from PIL import Image

    ckpt, path = pages["lstm2"]
    page = open_page(path)
    header = page.inner_text("#header")
    for want in (str(ckpt), "lstm", f"2 x {H}", "1.5000 nats/char", "vocabulary of 11"):
        assert want in header, (want, header)
    assert "c_t = f * c_{t-1} + i * g" in page.inner_text("#equations")
    _fill(page, "bad", 300, 9)
    page.click("#generate")
    page.wait_for_selector("body[data-done='1']")
    page.locator("#out span.gen").nth(40).hover()
    img = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    assert len(img.getcolors(maxcolors=1 << 20)) > 50


def test_hostile_path_vocabulary_and_nan_loss(tmp_path, open_page):
    d = tmp_path / "<!--<script>" / "<" / "script>"  # the path holds </script> too
    d.mkdir(parents=True)
    ckpt = save_model(d / "m.pt", "lstm", 1, vocab=Vocab(sorted(set("<!--script>&/ \n"))))
    raw = torch.load(ckpt, weights_only=True)
    checkpoint.save(dict(raw, last_val=float("nan")), ckpt)
    assert main(["export", "--checkpoint", str(ckpt), "--format", "html", "--out", str(d / "p.html")]) == 0
    page = open_page(d / "p.html")
    header = dict(page.eval_on_selector_all("#header tr", "rows => rows.map(r => [r.cells[0].textContent, "
                                                          "r.cells[1].textContent])"))
    assert header["checkpoint"] == str(ckpt) and header["validation loss"] == "n/a"
    text = page.evaluate("() => window.charrnn.generate({prime: '<!--<script>', length: 50, seed: 2}).text")
    assert len(text) == 50 and set(text) <= set("<!--script>&/ \n")
    assert "<!--<script>" not in (d / "p.html").read_text().split('<script id="data"')[1]  # escaped in the data
