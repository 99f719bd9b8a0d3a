"""Proves visualize.py's page works in a real browser (headless Debian Chromium, driven by
Playwright): it loads from file:// with no console errors and no network requests, hovering a
character shows the model's top-5 guesses for it, the header names what a built-in corpus was
built from, only the features the text has get rows and the unit picker opens on the first one's
best unit, picking a unit recolours the text by that unit, clicking a feature's row picks its
best unit, the gradients-through-time section draws every curve and factor, and a screenshot is
not blank. A page whose every embedded string is hostile (`<!--`
then `<script`, `</script>`, `&amp;`: in the checkpoint's path, the text and the corpus record)
and whose validation loss is NaN runs all the same, shows each string as it is and the loss as
n/a, and its insight.json is strict JSON.

Nothing downloads a browser: the tests use /usr/bin/chromium (apt-get install chromium). Without
it they skip, unless CHARRNN_REQUIRE_BROWSER=1 (set by .ci/run), where a missing browser fails.

Run: pytest -m browser
"""
import io
import json

import pytest
import torch

from charrnn_torch.training import checkpoint
from charrnn_torch.cli import main
from charrnn_torch.data.code_corpus import describe
from charrnn_torch.data.vocab import Vocab
from charrnn_torch.model.cells import CharRNN
from conftest import chromium, watch

pytestmark = pytest.mark.browser
SOURCE = {"name": "python-stdlib", "python": "CPython 3.0.1", "stdlib": "/opt/lib/python3.0", "max_bytes": 5000,
          "files": 12, "skipped": 1, "bytes": 4999}  # what a run on the built-in corpus records


@pytest.fixture(scope="module")
def page_file(tmp_path_factory):
    """A page for a small random 2-layer LSTM (so the picker has h and c groups) on a few lines."""
    d = tmp_path_factory.mktemp("viz")
    text = "".join(f"LINE {i}:\nthe (quick) brown fox, {i} times.\n" for i in range(40))
    vocab = Vocab.from_text(text)
    torch.manual_seed(0)
    model = CharRNN(len(vocab), 16, num_layers=2, cell="lstm")
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4)  # strong weights, so the guesses change from character to character
    checkpoint.save({"format": checkpoint.FORMAT, "model": model.state_dict(), "model_args": model.model_args(),
                     "vocab": list(vocab.chars), "step": 3, "last_val": 2.0, "data_source": SOURCE}, d / "m.pt")
    (d / "t.txt").write_text(text)
    assert main(["visualize", "--checkpoint", str(d / "m.pt"), "--text", str(d / "t.txt"), "--out", str(d)]) == 0
    return d / "index.html"


@pytest.fixture(scope="module")
def browser():
    with chromium({"width": 1200, "height": 900}) as ctx:
        yield ctx


@pytest.fixture(scope="module")
def browser_page(browser, page_file):
    """The page, loaded, with what it logged and requested."""
    page = browser.new_page()
    seen = watch(page)
    page.goto(page_file.as_uri())
    page.wait_for_selector("body[data-ready='1']", timeout=30000)
    yield page, seen


def test_loads_offline_without_errors(browser_page, page_file):
    page, seen = browser_page
    assert seen["errors"] == []
    assert seen["requests"] == [page_file.as_uri()]  # the page itself, nothing else
    assert page.inner_text("#header").count("lstm") == 1
    assert f"trained on\t{describe(SOURCE)}" in page.inner_text("#header")


def test_it_shows_the_features_of_this_text_and_starts_at_the_first(browser_page, page_file):
    """Rows only for the features the text has (the others named in one line), and "colour by unit"
    opens on the first feature's best unit, not on unit 0 of layer 0."""
    page, _ = browser_page
    search = json.loads((page_file.parent / "insight.json").read_text())["search"]
    shown = [name for name, f in search.items() if f["occurs"]]
    absent = [name for name, f in search.items() if not f["occurs"]]
    assert absent and page.locator("#features tr.feature-row").all_inner_texts()[0].startswith(shown[0])
    assert page.locator("#features tr.feature-row").count() == len(shown)
    assert page.inner_text("#absent") == f"Not in this text, so not searched: {', '.join(absent)}."
    best = search[shown[0]]["units"][0]
    assert page.inner_text("#unit-label") == f"{best['state']} layer {best['layer']} unit {best['unit']}"
    assert (best["state"], best["layer"], best["unit"]) != ("h", 0, 0)


def test_hover_shows_the_top5_guesses(browser_page, page_file):
    page, _ = browser_page
    data = json.loads((page_file.parent / "insight.json").read_text())
    top = data["surprise"]["top_ids"]
    t = 1 + next(i for i in range(20, len(top)) if top[i] != top[i - 1] and top[i] != top[i + 1])
    page.hover(f"#surprise-text span[data-i='{t}']")
    assert page.is_visible("#tip")
    guesses = page.locator("#tip .guess").all_inner_texts()
    want = [data["vocab"][i] for i in data["surprise"]["top_ids"][t - 1]]
    assert len(guesses) == 5
    assert [g.rsplit(":", 1)[0] for g in guesses] == [{"\n": "\\n", " ": "\u2423"}.get(c, c) for c in want]
    assert f"rank {data['surprise']['rank'][t - 1]}" in page.inner_text("#tip")


def _unit_colours(page):
    return page.eval_on_selector_all("#unit-text span", "spans => spans.map(s => s.style.background)")


def test_picking_a_unit_recolours_the_text(browser_page):
    page, _ = browser_page
    before = _unit_colours(page)
    page.select_option("#unit-group", label="c, layer 1")
    page.fill("#unit-index", "9")
    after = _unit_colours(page)
    assert page.inner_text("#unit-label") == "c layer 1 unit 9"
    assert len(set(after)) > 5 and sum(a != b for a, b in zip(before, after)) > len(before) // 2


def test_clicking_a_feature_picks_its_best_unit(browser_page, page_file):
    page, _ = browser_page
    best = json.loads((page_file.parent / "insight.json").read_text())["search"]["start of line"]["units"][0]
    page.click("#features tr.feature-row:has-text('start of line')")
    assert page.inner_text("#unit-label") == f"{best['state']} layer {best['layer']} unit {best['unit']}"


def test_gradients_section_draws_every_curve_and_factor(browser_page, page_file):
    """One polyline per state, layer and time (trained, step 0) of insight.json's curves, each with
    as many points as the window has distances, and one factor row per layer with its numbers."""
    page, _ = browser_page
    g = json.loads((page_file.parent / "insight.json").read_text())["gradients"]
    want = sum(len(layers) for when in ("trained", "init") for layers in g[when]["grad"].values())
    assert want == 2 * 2 * 2  # h and c, 2 layers, trained and step 0
    points = page.eval_on_selector_all("#gradient-curves polyline.gradient-line",
                                       "ls => ls.map(l => l.getAttribute('points').split(' ').length)")
    assert points == [g["window"]] * want
    assert all(p.is_visible() for p in page.locator("#gradient-curves polyline").all())
    assert f"a window of {g['window']}" in page.inner_text("#gradients-note")
    rows = page.locator("#gradient-factors tr").all_inner_texts()
    assert len(rows) == 1 + 2 + 1  # header, a row per layer, the footnote
    for l in range(2):
        assert rows[1 + l].startswith(f"{l}\t{g['trained']['jacobian'][l]:.3f} / {g['init']['jacobian'][l]:.3f}")


def test_screenshot_is_not_blank(browser_page):
    from PIL import Image

    page, _ = browser_page
    img = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
    colours = img.getcolors(maxcolors=1 << 20)
    assert len(colours) > 50, len(colours)


HOSTILE = "<!--<script>x</script>&amp;<b>"  # ends a naive page's data early, or makes it skip its own end


@pytest.fixture(scope="module")
def hostile_page(tmp_path_factory):
    """The page of a checkpoint whose path, text and corpus record hold HOSTILE, its last loss NaN."""
    d = tmp_path_factory.mktemp("viz") / "<!--<script>" / "<" / "script>"  # the path holds </script> too
    d.mkdir(parents=True)
    text = "".join(f"{HOSTILE} line {i} & <!-- more -->\n" for i in range(30))
    vocab = Vocab.from_text(text)
    torch.manual_seed(1)
    model = CharRNN(len(vocab), 8, cell="gru")
    source = dict(SOURCE, python=HOSTILE, stdlib="</script><!--<script>")
    checkpoint.save({"format": checkpoint.FORMAT, "model": model.state_dict(), "model_args": model.model_args(),
                     "vocab": list(vocab.chars), "step": 3, "last_val": float("nan"), "data_source": source},
                    d / "m.pt")
    (d / "t.txt").write_text(text)
    assert main(["visualize", "--checkpoint", str(d / "m.pt"), "--text", str(d / "t.txt"), "--out", str(d)]) == 0
    return d, text, source


def test_hostile_strings_and_nan_do_not_stop_the_page(browser, hostile_page):
    d, text, source = hostile_page
    page_file = d / "index.html"
    page = browser.new_page()
    seen = watch(page)
    page.goto(page_file.as_uri())
    page.wait_for_selector("body[data-ready='1']", timeout=15000)
    header = dict(page.eval_on_selector_all("#header tr", "rows => rows.map(r => [r.cells[0].textContent, "
                                                            "r.cells[1].textContent])"))
    shown = page.eval_on_selector_all("#surprise-text span", "s => s.map(e => e.textContent).join('')")
    assert seen["errors"] == [] and seen["requests"] == [page_file.as_uri()]
    assert header["checkpoint"] == str(d / "m.pt") and header["validation loss"] == "n/a"
    assert header["text"] == str(d / "t.txt") and header["trained on"] == describe(source)
    assert shown == text.replace("\n", "\u21b5\n")
    assert HOSTILE not in page_file.read_text()  # escaped in the data and the title, never as it is

    def no_constants(name):
        raise AssertionError(f"insight.json holds {name}, which is not JSON")
    data = json.loads((d / "insight.json").read_text(), parse_constant=no_constants)
    assert data["header"]["val_loss"] is None and data["text"] == text
