"""Proves what visualize.py shows is right, without a browser: planted units (a bistable
"inside brackets" switch, a "start of line" detector in the layer above) are ranked first by the
search with correlation near 1, and so are GRU units wired by hand to track each code feature on
Python-like text (a toggle inside '...', "..." and triple-quoted strings, a switch inside a comment,
a counter of bracket depth, and three units that read a line's indentation); the Python scanner
reads strings, escapes, comments, brackets and indentation as the snippets' known answers say, and
the code features do not occur in prose, and apply only to code (a text that reads as Python,
or a model of python-stdlib); the page's per-character losses sum to --score's total and its
top-5 guesses and ranks are the model's; the recorded states and gates are the ones the model
computes (the trace ends in the model's own final state, and an LSTM's recorded gates rebuild its
recorded c); saturation counts left and right the right way round; the text features mark what
they say; TensorBoard gets the units-by-time image and the character embedding; and every bad
input is one error line with exit status 2 and nothing written.

Run: pytest tests/test_visualize.py
"""
import json
import math
import random

import numpy as np
import pytest
import torch

from charrnn_torch.training import checkpoint
from charrnn_torch.cli import main
from charrnn_torch.training.config import build_config
from charrnn_torch.data.vocab import Vocab
from charrnn_torch.model.cells import CharRNN
from charrnn_torch.sampling.sample import score
from charrnn_torch.training.trainer import train
from charrnn_torch.insight.heatmap import diverging_rgb
from charrnn_torch.insight.pyscan import indentation, scan_python
from charrnn_torch.insight.visualize import CODE_STRINGS, saturation, search_units, text_features, trace
from conftest import tiny_overrides

BRACKETS = "abc de(f)\n"  # V = 10


def bracket_text(n, seed=0):
    """Random text over BRACKETS with balanced, unnested parentheses and many lines."""
    rng, out, inside = random.Random(seed), [], False
    while len(out) < n:
        ch = rng.choice("abcde \n" * 3 + "(" if not inside else "abcde \n" * 3 + ")")
        inside = (inside or ch == "(") and ch != ")"
        out.append(ch)
    return "".join(out)


def planted_model(vocab):
    """2 layers of H=7, random weights, with two units wired by hand:
    layer 0 unit 2: a bistable switch, "(" drives it to +1 and ")" to -1, its self-weight holds it;
    layer 1 unit 5: fires (+1) right after a newline, reading layer 0 unit 4, a newline detector."""
    torch.manual_seed(0)
    model = CharRNN(len(vocab), 7, num_layers=2, cell="rnn").double()
    c0, c1 = model.cells
    s = vocab.stoi
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
        c0.W_xh[2].zero_(); c0.W_hh[2].zero_()  # noqa: E702
        c0.W_xh[2, s["("]], c0.W_xh[2, s[")"]], c0.W_hh[2, 2], c0.b_h[2] = 10.0, -10.0, 3.0, -0.5
        c0.W_xh[4].zero_(); c0.W_hh[4].zero_()  # noqa: E702
        c0.W_xh[4, s["\n"]], c0.b_h[4] = 10.0, -5.0
        c1.W_xh[5].zero_(); c1.W_hh[5].zero_()  # noqa: E702
        c1.W_xh[5, 4], c1.b_h[5] = 10.0, 0.0
    return model


def test_planted_units_are_found_first():
    text = bracket_text(3000)
    vocab = Vocab.from_text(text)
    states = trace(planted_model(vocab), vocab.encode(text))
    found = search_units(states, text_features(text))
    best = found["inside brackets"]["units"][0]
    assert (best["state"], best["layer"], best["unit"]) == ("h", 0, 2) and best["corr"] > 0.99, found["inside brackets"]
    best = found["start of line"]["units"][0]
    assert (best["state"], best["layer"], best["unit"]) == ("h", 1, 5) and best["corr"] > 0.99, found["start of line"]
    # the runner-up is a different unit, and every layer reports its own best
    assert found["inside brackets"]["units"][1]["corr"] != best["corr"]
    assert sorted(e["layer"] for e in found["start of line"]["best_per_layer"]) == [0, 1]
    assert found["inside quotes"] == {"occurs": False, "units": [], "best_per_layer": []}


WORDS = ("x", "self", "return", "len", "data", "if", "i", "0", "1", "None", "=", "+", ",", ".", ":")
PAIRS = {"(": ")", "[": "]", "{": "}"}


def code_text(n, seed=0):
    """Random Python-like lines after a newline: indentation in steps of 4 spaces, blank lines,
    brackets nested up to 4 deep and open across lines, '...' and "..." strings and # comments.
    Strings and comments hold only words: no quotes, brackets, # or backslashes."""
    rng, out, stack, indent = random.Random(seed), ["\n"], [], 0
    while sum(map(len, out)) < n:
        indent = max(0, min(12, indent + rng.choice((-4, 0, 0, 4))))
        line = [" " * indent]
        for _ in range(rng.randint(1, 8)):
            r = rng.random()
            if r < 0.15 and len(stack) < 4:
                stack.append(rng.choice(list(PAIRS)))
                line.append(stack[-1])
            elif r < 0.3 and stack:
                line.append(PAIRS[stack.pop()] + " ")
            elif r < 0.45:
                q = rng.choice("'\"")
                line.append(q + " ".join(rng.choices(WORDS, k=rng.randint(0, 4))) + q + " ")
            else:
                line.append(rng.choice(WORDS) + " ")
        if rng.random() < 0.3:
            line.append("# " + " ".join(rng.choices(WORDS, k=rng.randint(1, 6))))
        out.append("".join(line) + "\n" + "\n" * (rng.random() < 0.1))
    return "".join(out) + "".join(PAIRS[c] for c in reversed(stack))


def docstring_text(n, seed=0):
    """Long '''...''' strings across lines, the first at the start, and between them lines of code
    without quotes."""
    rng, out = random.Random(seed), []
    while sum(map(len, out)) < n:
        out.append("'''" + "".join(rng.choice(WORDS) + rng.choice(" \n") for _ in range(rng.randint(60, 120))) + "'''")
        out.append("".join(rng.choice(WORDS) + rng.choice(" \n") for _ in range(rng.randint(60, 120))))
    return "".join(out)


GATE_ROWS = {"r": 0, "z": 1, "n": 2}  # a GRU layer's rows: (r, z, n) blocks of H
OPEN, SHUT = 20.0, -20.0  # sigmoid(20) = 1 - 2e-9


def wire(cell, vocab, k, gate, weights):
    """Unit k's row of one gate of a GRU layer that reads characters: every character's weight is
    weights["other"] unless it is named; an int names a recurrent weight from that unit, "bias" the bias."""
    row = GATE_ROWS[gate] * cell.hidden_size + k
    cell.W_xh[row] = weights.get("other", 0.0)
    cell.W_hh[row] = 0.0
    cell.b_h[row] = weights.get("bias", 0.0)
    cell.b_hn[k] = 0.0
    for key, w in weights.items():
        if isinstance(key, int):
            cell.W_hh[row, key] = w
        elif len(key) == 1:
            cell.W_xh[row, vocab.stoi[key]] = w


def toggle(cell, vocab, k, quote, reset_at_newline):
    """Flips between -1 and +1 at each quote (n = tanh(5 - 10 h), let through by z = 0), holds
    otherwise (z = 1); at a newline, -1."""
    ends = {quote: SHUT, **({"\n": SHUT} if reset_at_newline else {})}
    wire(cell, vocab, k, "r", {"bias": OPEN})
    wire(cell, vocab, k, "z", {"other": OPEN, **ends})
    wire(cell, vocab, k, "n", {quote: 5.0, k: -10.0, **({"\n": -30.0} if reset_at_newline else {})})


def switch(cell, vocab, k, on, off):
    """A bistable tanh unit (z = 0): `on` drives it to +1, `off` to -1, its self-weight holds it."""
    wire(cell, vocab, k, "r", {"bias": OPEN})
    wire(cell, vocab, k, "z", {"other": SHUT})
    wire(cell, vocab, k, "n", {on: 10.0, off: -10.0, k: 3.0, "bias": -0.5})


def counter(cell, vocab, k, step):
    """h = tanh(h + step[ch]): a sum of steps while it stays small, where tanh is the identity."""
    wire(cell, vocab, k, "r", {"bias": OPEN})
    wire(cell, vocab, k, "z", {"other": SHUT})
    wire(cell, vocab, k, "n", {k: 1.0, **step})


def indenter(cell, vocab, line, spaces, out):
    """Three units: `line` (+1 from a newline until a line's first non-blank character, else -1);
    `spaces` (0.001 per space since the newline, which empties it through r = 0); `out` takes
    `spaces` at a line's first non-blank character (z = 0 there) and holds it otherwise."""
    wire(cell, vocab, line, "r", {"bias": OPEN})
    wire(cell, vocab, line, "z", {"other": SHUT})
    wire(cell, vocab, line, "n", {"other": -10.0, " ": 0.0, "\n": 10.0, line: 3.0, "bias": -0.5})
    wire(cell, vocab, spaces, "r", {"bias": OPEN, "\n": 2 * SHUT})
    wire(cell, vocab, spaces, "z", {"other": SHUT})
    wire(cell, vocab, spaces, "n", {" ": 0.001, spaces: 1.0})
    wire(cell, vocab, out, "r", {"bias": OPEN})
    wire(cell, vocab, out, "z", {"other": -20.0, " ": 40.0, "\n": 40.0, line: -20.0, "bias": 15.0})
    wire(cell, vocab, out, "n", {spaces: 1.0})


PLANTED = {  # feature -> (its text, the wiring of unit 5 (and helpers) of layer 0 of a 1x7 GRU)
    "code: inside '...'": (code_text, lambda c, v: toggle(c, v, 5, "'", reset_at_newline=True)),
    'code: inside "..."': (code_text, lambda c, v: toggle(c, v, 5, '"', reset_at_newline=True)),
    # toggled by every quote, it is out after the second of three: 2 characters per string wrong
    "code: inside a triple-quoted string": (docstring_text, lambda c, v: toggle(c, v, 5, "'", reset_at_newline=False)),
    "code: inside a comment": (code_text, lambda c, v: switch(c, v, 5, "#", "\n")),
    "code: bracket depth": (code_text, lambda c, v: counter(c, v, 5, {**{o: 1e-3 for o in PAIRS},
                                                                       **{c: -1e-3 for c in PAIRS.values()}})),
    "code: indentation": (code_text, lambda c, v: indenter(c, v, 2, 3, 5)),
}


@pytest.mark.parametrize("feature", PLANTED)
def test_planted_code_units_are_found_first(feature):
    make_text, plant = PLANTED[feature]
    text = make_text(4000, seed=1)
    vocab = Vocab.from_text(text)
    torch.manual_seed(0)
    model = CharRNN(len(vocab), 7, cell="gru").double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
        plant(model.cells[0], vocab)
    found = search_units(trace(model, vocab.encode(text)), text_features(text))[feature]
    best = found["units"][0]
    assert (best["state"], best["layer"], best["unit"]) == ("h", 0, 5) and best["corr"] > 0.99, found
    assert abs(found["units"][1]["corr"]) < best["corr"]


def test_code_features_do_not_occur_in_prose():
    text = "ROMEO:\nWhat light (through yonder window) breaks?\nJULIET:\nAy me.\n" * 10
    vocab = Vocab.from_text(text)
    found = search_units(trace(planted_model(vocab), vocab.encode(text)), text_features(text))
    assert [name for name, f in found.items() if name.startswith("code:") and f["occurs"]] == ["code: bracket depth"]


PROSE = "ROMEO:\nCall'd it the night's own. 'Tis true (he said).\nJULIET:\nAy me, 'twas so.\n" * 20


def test_the_code_features_apply_to_code_only():
    """The rule (visualize.CODE_LINE): a text whose lines open like Python statements gets the code
    features; prose gets none, however many apostrophes open a '...'; a model trained on
    python-stdlib gets them on any text."""
    import inspect
    import functools
    from charrnn_torch.insight import visualize
    code = inspect.getsource(functools)[:3000]
    assert visualize.looks_like_code(code)
    assert not visualize.looks_like_code(PROSE) and not visualize.looks_like_code("")
    assert not any(name.startswith("code:") for name in text_features(PROSE, code=False))
    vocab = Vocab.from_text(PROSE)
    model = CharRNN(len(vocab), 7)
    stdlib = {"name": "python-stdlib", "python": "CPython 3.0.1", "stdlib": "/opt/lib/python3.0", "max_bytes": 5000,
              "files": 12, "skipped": 1, "bytes": 4999}
    for source, want in ((None, False), (stdlib, True)):
        data, _ = visualize.page_data(model, vocab, {"step": 1, "data_source": source}, "m.pt", PROSE, "prose")
        assert any(name.startswith("code:") for name in data["search"]) == want, source
    assert text_features(PROSE)["code: inside '...'"].any()  # what the rule keeps off a prose page


def test_text_features_mark_what_they_say():
    text = 'To be (or [not])\nROMEO:\nSay "hi". Ok'
    f = text_features(text)
    at = lambda name: "".join("1" if v else "0" for v in f[name])  # noqa: E731
    assert at("inside brackets") == "000000111111111000000000000000000000000"[:len(text)]
    assert at("start of line") == "".join("1" if c == "\n" else "0" for c in text)
    assert at("inside quotes") == "".join("1" if 28 <= i < 31 else "0" for i in range(len(text)))
    assert at("uppercase") == "".join("1" if c.isupper() else "0" for c in text)
    assert at("speaker line") == "".join("1" if 17 <= i < 23 else "0" for i in range(len(text)))
    assert f["position in line"][:3].tolist() == [1, 2, 3] and f["position in line"][16] == 0
    assert f["position in line"][17] == 1
    assert f["position in word"][:4].tolist() == [1, 2, 0, 1]
    assert at("after sentence end")[31:] == "01100"  # the closing quote, then ". " until the O


def digits(values):
    return "".join(str(int(v)) for v in values)


@pytest.mark.parametrize("text,states,depths", [
    # strings and a comment, brackets in neither counted; a closing quote is code again
    ("x = 'a(b' + \"c#d\" # e (f)\ny(", "000011110000222200444444400" + "0", "0" * 27 + "1"),
    # a triple-quoted string across lines, quotes and brackets inside it; then nested brackets
    ('s = """doc \'x\' (\n z"""\nf(a[b])', "0000" + "3" * 17 + "0" + "0" * 8, "0" * 23 + "0112210"),
    ("''' a '''b", "3333333300", "0" * 10),  # the last quote of three closes the string
    ("'' '", "1001", "0000"),  # an empty string, then one left open
    # escapes: \' and \" stay inside, and a backslash-newline continues the string
    ("'it\\'s' \"a\\\"b\" 'c\\\nd'", "1111110" + "0" + "222220" + "0" + "111110", "0" * 21),
    # prose: an apostrophe opens a string that its line's end closes; a stray closer is not -1 deep
    ("don't (x)\ny) (", "000111111000" + "00", "0" * 10 + "0001"),
    ("# it's (\nx'#'", "44444444" + "0" + "0" + "110", "0" * 13),
])
def test_scan_python_reads_strings_comments_and_brackets(text, states, depths):
    state, depth = scan_python(text)
    assert (digits(state), digits(depth)) == (states, depths)


def test_indentation_changes_at_a_lines_first_character():
    text = "def f():\n    x = 1\n\n    if x:\n\ty\n  \n z"
    want = [0] * 9 + [0] * 4 + [4] * 6 + [4] + [4] * 4 + [4] * 6 + [4] + [8] * 2 + [8] * 3 + [8] + [1]
    assert indentation(text).tolist() == want


def test_code_features_are_the_scanners():
    text = "def f(a):\n    '''Doc.'''\n    return [a, \"b\", 'e']  # c 'd'\n"
    f = text_features(text)
    state, depth = scan_python(text)
    for name, code in CODE_STRINGS.items():
        assert (f[name] == (state == code)).all() and f[name].any(), name
    assert (f["code: bracket depth"] == depth).all() and f["code: bracket depth"].max() == 1
    assert (f["code: indentation"] == indentation(text)).all() and f["code: indentation"].max() == 4


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_trace_is_the_models_own_computation(cell):
    torch.manual_seed(1)
    model = CharRNN(11, 7, num_layers=2, cell=cell).double()
    ids = torch.randint(0, 11, (40,))
    rec = trace(model, ids)
    with torch.no_grad():
        _, state = model(ids[None])
    h_final = state[0] if cell == "lstm" else state
    assert np.abs(rec["h"][:, -1] - h_final[:, 0].numpy()).max() < 1e-12
    assert rec["h"].shape == (2, 40, 7)
    if cell == "lstm":
        assert np.abs(rec["c"][:, -1] - state[1][:, 0].numpy()).max() < 1e-12
        c_prev = np.concatenate([np.zeros((2, 1, 7)), rec["c"][:, :-1]], 1)
        rebuilt = rec["forget"] * c_prev + rec["input"] * rec["candidate"]
        assert np.abs(rebuilt - rec["c"]).max() < 1e-12
        assert np.abs(rec["output"] * np.tanh(rec["c"]) - rec["h"]).max() < 1e-12
    if cell == "gru":
        h_prev = np.concatenate([np.zeros((2, 1, 7)), rec["h"][:, :-1]], 1)
        rebuilt = (1 - rec["update"]) * rec["candidate"] + rec["update"] * h_prev
        assert np.abs(rebuilt - rec["h"]).max() < 1e-12


def test_saturation_left_and_right_the_right_way_round():
    torch.manual_seed(2)
    model = CharRNN(11, 7, cell="lstm").double()
    H = 7
    with torch.no_grad():
        model.cells[0].b_h[0:H] = -30.0  # input gate: always shut (left-saturated)
        model.cells[0].b_h[H:2 * H] = 30.0  # forget gate: always open (right-saturated)
        model.cells[0].b_h[3 * H] = 0.0  # output gate unit 0: in between, with small weights
        model.cells[0].W_xh[3 * H].zero_(); model.cells[0].W_hh[3 * H].zero_()  # noqa: E702
    sat = saturation(model, trace(model, torch.randint(0, 11, (50,))))
    g = sat["layers"][0]["gates"]
    assert set(g) == {"input", "forget", "output"}
    assert g["input"]["left"] == [1.0] * H and g["input"]["right"] == [0.0] * H
    assert g["forget"]["right"] == [1.0] * H and g["forget"]["left"] == [0.0] * H
    assert g["output"]["left"][0] == 0.0 and g["output"]["right"][0] == 0.0
    rnn = CharRNN(11, 7).double()
    with torch.no_grad():
        rnn.cells[0].b_h[:] = torch.tensor([-30.0, 30, 0, 0, 0, 0, 0])
        rnn.cells[0].W_hh[:2].zero_(); rnn.cells[0].W_xh[:2].zero_()  # noqa: E702
    g = saturation(rnn, trace(rnn, torch.randint(0, 11, (50,))))["layers"][0]["gates"]["h"]
    assert (g["left"][0], g["right"][0], g["left"][1], g["right"][1]) == (1.0, 0.0, 0.0, 1.0)


def test_diverging_colours():
    rgb = diverging_rgb(np.array([-1.0, 0.0, 1.0, -0.5]))
    assert rgb[:, 0].tolist() == [0, 0, 255] and rgb[:, 1].tolist() == [255, 255, 255]
    assert rgb[:, 2].tolist() == [255, 0, 0] and rgb[:, 3].tolist() == [128, 128, 255]


def save_model(model, vocab, path, **extra):
    checkpoint.save({"format": checkpoint.FORMAT, "model": model.state_dict(), "model_args": model.model_args(),
                     "vocab": list(vocab.chars), "step": 7, "last_val": 1.5, **extra}, path)
    return path


def test_surprise_sums_to_the_score_and_guesses_are_the_models(tmp_path, capsys):
    text = bracket_text(1500, seed=3) + "Z"  # Z: outside the vocabulary, removed by both
    vocab = Vocab.from_text(BRACKETS)
    model = planted_model(vocab)
    ck = save_model(model, vocab, tmp_path / "m.pt")
    (tmp_path / "t.txt").write_text(text)
    assert main(["visualize", "--checkpoint", str(ck), "--text", str(tmp_path / "t.txt"), "--out",
                           str(tmp_path / "viz"), "--max-chars", "5000"]) == 0
    viz = tmp_path / "viz"
    assert capsys.readouterr().out.startswith(f"wrote {viz / 'index.html'} and {viz / 'insight.json'}: 1,500 characters")
    data = json.loads((tmp_path / "viz" / "insight.json").read_text())
    S = data["surprise"]
    want = score(model, vocab, text)
    assert len(S["bits"]) == want["count"] == 1499
    assert abs(sum(S["bits"]) * math.log(2) - want["total_nats"]) <= 1e-9 * want["total_nats"]
    # each character's loss, guesses and rank, computed here from one plain forward pass
    ids = vocab.encode(text[:-1])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids[None])[0][0, :-1], -1)  # (N-1, V) predicting ids[1:]
    actual = logp.gather(1, ids[1:, None])[:, 0]
    assert np.allclose(S["bits"], (-actual / math.log(2)).tolist(), rtol=0, atol=1e-12)
    assert S["top_ids"] == logp.topk(5, -1).indices.tolist()
    assert S["rank"] == (1 + (logp > actual[:, None]).sum(-1)).tolist()
    assert data["header"]["source"].endswith("(1 characters outside the vocabulary removed)")


def test_max_chars_caps_the_text(tmp_path):
    vocab = Vocab.from_text(BRACKETS)
    ck = save_model(planted_model(vocab), vocab, tmp_path / "m.pt")
    (tmp_path / "t.txt").write_text(bracket_text(900))
    assert main(["visualize", "--checkpoint", str(ck), "--text", str(tmp_path / "t.txt"), "--out",
                           str(tmp_path / "viz"), "--max-chars", "300"]) == 0
    data = json.loads((tmp_path / "viz" / "insight.json").read_text())
    assert len(data["text"]) == 300 and len(data["surprise"]["bits"]) == 299
    assert "(the first 300 of 900 characters)" in data["header"]["source"]
    page = (tmp_path / "viz" / "index.html").read_text()
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page


def test_from_val_reads_the_runs_validation_split(tmp_path, corpus_file):
    out = tmp_path / "run"
    train(build_config({}, tiny_overrides(corpus_file, out, **{"train.max_steps": 10, "model.cell": "gru",
                                                                "model.num_layers": 2})),
          progress=False, log=lambda *a: None)
    assert main(["visualize", "--checkpoint", str(out), "--from-val", "400", "--out", str(tmp_path / "viz")]) == 0
    data = json.loads((tmp_path / "viz" / "insight.json").read_text())
    text = corpus_file.read_text()
    assert data["text"] == text[len(text) - int(len(text) * 0.1):][:400]
    assert data["header"]["cell"] == "gru" and data["header"]["step"] == 10
    assert set(data["saturation"]["layers"][1]["gates"]) == {"reset", "update"}


def test_tensorboard_gets_the_heatmap_and_the_embedding(tmp_path, corpus_file):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = tmp_path / "run"
    train(build_config({}, tiny_overrides(corpus_file, out, **{"train.max_steps": 20, "model.num_layers": 2,
                                                                "model.hidden_size": 12})),
          progress=False, log=lambda *a: None)
    acc = EventAccumulator(str(out), size_guidance={"images": 0})
    acc.Reload()
    images = acc.Images("hidden/units_by_time")
    assert [e.step for e in images] == [10, 20]
    assert (images[0].height, images[0].width) == (2 * 12, 100)
    labels = (out / "projector" / "00020" / "char_embedding" / "metadata.tsv").read_text().split("\n")
    vocab = sorted(set(corpus_file.read_text()))
    assert labels[:len(vocab)] == [{"\n": "\\n", " ": "\u2423"}.get(c, c) for c in vocab]
    rows = (out / "projector" / "00020" / "char_embedding" / "tensors.tsv").read_text().strip().split("\n")
    assert len(rows) == len(vocab) and len(rows[0].split("\t")) == 12


@pytest.mark.parametrize("case", ["missing", "not-a-checkpoint", "empty-text", "all-unknown", "out-is-file",
                                  "two-sources"])
def test_bad_input_is_one_error_line(tmp_path, case, capsys):
    vocab = Vocab.from_text(BRACKETS)
    ck = save_model(planted_model(vocab), vocab, tmp_path / "m.pt")
    text = tmp_path / "t.txt"
    text.write_text("abc(d)\n")
    out = tmp_path / "viz"
    args = {"--checkpoint": ck, "--text": text, "--out": out}
    if case == "missing":
        args["--checkpoint"] = tmp_path / "nope.pt"
    elif case == "not-a-checkpoint":
        args["--checkpoint"] = text
    elif case == "empty-text":
        text.write_text("")
    elif case == "all-unknown":
        text.write_text("XYZ!?")
    elif case == "out-is-file":
        out.write_text("keep me")
    elif case == "two-sources":
        args["--from-val"] = 100
    code = main(["visualize", *[str(a) for kv in args.items() for a in kv]])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    if case == "out-is-file":
        assert out.read_text() == "keep me"
    else:
        assert not out.exists()
