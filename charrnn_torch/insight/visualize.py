"""Looking inside a trained model, after Karpathy, Johnson & Fei-Fei (2015), "Visualizing and
Understanding Recurrent Networks": per-character surprise with the model's top guesses, a search
for hidden units that track simple features of the text, and gate saturation.

Everything here is numbers; ``viz_page.py`` turns them into the HTML page. Activations are
recorded by the model's own readable unroll (``CharRNN.trace``); the surprise comes from
``sample.char_losses``, the function ``--score`` sums, so the two agree.
"""
import math
import re

import numpy as np
import torch

from ..data import code_corpus
from ..data.corpus import describe_source
from ..data.vocab import drop_unknown
from ..errors import UserError
from ..sampling.sample import char_losses
from .pyscan import CLOSING, COMMENT, DOUBLE, OPENING, SINGLE, TRIPLE, indentation, scan_python

TOP_GUESSES = 5
UNITS_KEPT = 20  # per feature, in the JSON: the best units, ranked by |correlation|
SATURATED = 0.1  # a sigmoid gate is left-saturated below this, right-saturated above 1 - this
TANH_SATURATED = 0.9  # |h| above this counts as saturated for the tanh cell

SPEAKER_LINE = re.compile(r"[A-Za-z][A-Za-z' ]*:")  # "ROMEO:", "First Citizen:" on a line of their own
# The features of text read as Python source (pyscan.py), beside the prose ones: name -> the
# scanner's state it marks.
CODE_STRINGS = {"code: inside '...'": SINGLE, 'code: inside "..."': DOUBLE,
                "code: inside a triple-quoted string": TRIPLE, "code: inside a comment": COMMENT}
# The code features apply to a model of code (trained on python-stdlib) or to a text that looks
# like Python: at least CODE_LINES of its non-blank lines open, after their indentation, with a
# statement's keyword, a comment or a decorator. Prose does not (at most 2.3% of any 3,000
# characters of tiny shakespeare's validation split); 90% of 3,000-character pieces of the standard
# library do (their docstrings are the rest). Else an apostrophe ("Call'd") opens a '...' string.
CODE_LINE = re.compile(r"[ \t]*(?:(?:def|class|import|from|return|if|elif|else|for|while|try|except|finally|with|"
                       r"raise|yield|pass|break|continue|assert|del|global|nonlocal|async|await|lambda)\b|[#@])")
CODE_LINES = 0.10


# ---------------------------------------------------------------- the text

def prepare_text(vocab, text, max_chars):
    """The text the page shows: characters outside the vocabulary removed (and reported), then
    capped at max_chars. Returns (text, info dict)."""
    if not text:
        raise UserError("the text is empty")
    kept, unknown = drop_unknown(vocab, text)
    if len(kept) < 2:
        raise UserError(f"the text has {len(kept)} characters in the model's vocabulary (need >= 2); "
                        f"not in it: {', '.join(repr(c) for c in unknown[:10])}")
    info = {"chars_in": len(text), "unknown_removed": len(text) - len(kept), "unknown_set": unknown,
            "truncated_from": len(kept) if len(kept) > max_chars else None}
    return kept[:max_chars], info


def looks_like_code(text):
    """Whether text reads as Python source (CODE_LINE, CODE_LINES)."""
    lines = [line for line in text.split("\n") if line.strip()]
    return bool(lines) and sum(bool(CODE_LINE.match(line)) for line in lines) >= CODE_LINES * len(lines)


def text_features(text, code=True):
    """Simple properties of the text at each position, for the unit search: name -> (N,) float64.
    Each describes the moment just after character t is read, which is when h_t exists. The prose
    ones read quotes as double quotes (across lines) and count brackets wherever they are; those
    named "code: ..." (only with code) read the text as Python source (scan_python, indentation)."""
    n = len(text)
    f = {name: np.zeros(n) for name in ("inside quotes", "inside brackets", "position in line", "start of line",
                                        "inside a word", "position in word", "uppercase", "speaker line",
                                        "after sentence end")}
    quote = depth = col = word = 0
    sentence_over = 0
    for t, ch in enumerate(text):
        quote ^= ch == '"'
        depth = max(0, depth + (ch in OPENING) - (ch in CLOSING))  # a stray closer is not -1 deep
        col = 0 if ch == "\n" else col + 1
        word = word + 1 if ch.isalpha() else 0
        sentence_over = 1 if ch in ".!?" else (0 if ch.isalpha() else sentence_over)
        f["inside quotes"][t] = quote
        f["inside brackets"][t] = depth > 0
        f["position in line"][t] = col
        f["start of line"][t] = ch == "\n"
        f["inside a word"][t] = word > 0
        f["position in word"][t] = word
        f["uppercase"][t] = ch.isupper()
        f["after sentence end"][t] = sentence_over
    start = 0
    for line in text.split("\n"):
        if SPEAKER_LINE.fullmatch(line):
            f["speaker line"][start:start + len(line)] = 1
        start += len(line) + 1
    if not code:
        return f
    state, depth = scan_python(text)
    for name, code in CODE_STRINGS.items():
        f[name] = (state == code).astype(np.float64)
    f["code: indentation"] = indentation(text)
    f["code: bracket depth"] = depth
    return f


# ---------------------------------------------------------------- the model

def trace(model, ids):
    """Run ids (N,) through the model one character at a time from the zero state (the model's own
    loop unroll, CharRNN.trace), recording every layer's state and gates. Returns {name: (L, N, H)
    float64 array}: "h", "c" for the LSTM, and one entry per gate named by the cell's gate_names."""
    return {name: v[:, 0].double().cpu().numpy() for name, v in model.trace(ids[None]).items()}


def surprise(model, ids):
    """Per character t >= 1: its loss in bits given the text before it, the model's top guesses
    (ids and probabilities) and the rank of the actual character (1 = the top guess)."""
    nats, logits = char_losses(model, ids, keep_logits=True)  # (N-1,), (N-1, V)
    probs = torch.softmax(logits.double(), -1)
    top_p, top_i = probs.topk(min(TOP_GUESSES, probs.shape[-1]), -1)
    actual = probs.gather(1, ids[1:, None].to(probs.device))
    rank = 1 + (probs > actual).sum(-1)
    return {"bits": (nats / math.log(2)).tolist(), "nats_total": float(nats.sum()),
            "top_ids": top_i.tolist(), "top_probs": np.round(top_p.numpy(), 4).tolist(), "rank": rank.tolist()}


# ---------------------------------------------------------------- the search

def correlations(acts, feature):
    """Pearson correlation of every unit with one feature: acts (N, U), feature (N,) -> (U,).
    A unit or feature that never varies correlates 0."""
    a = acts - acts.mean(0)
    f = feature - feature.mean()
    denom = np.sqrt((a * a).sum(0) * (f * f).sum())
    return np.divide(a.T @ f, denom, out=np.zeros(acts.shape[1]), where=denom > 0)


def unit_columns(states):
    """All searchable units side by side: (N, U) activations and U labels (state, layer, unit)."""
    cols, labels = [], []
    for name in ("h", "c"):
        if name in states:
            L, N, H = states[name].shape
            cols.append(states[name].transpose(1, 0, 2).reshape(N, L * H))
            labels += [(name, l, u) for l in range(L) for u in range(H)]
    return np.concatenate(cols, 1), labels


def search_units(states, features, keep=UNITS_KEPT):
    """For each feature that varies in the text: the units ranked by |correlation|, best first
    (the first `keep`), and the best unit of each layer."""
    acts, labels = unit_columns(states)
    found = {}
    for name, feature in features.items():
        if feature.std() == 0:
            found[name] = {"occurs": False, "units": [], "best_per_layer": []}
            continue
        r = correlations(acts, feature)
        order = np.argsort(-np.abs(r), kind="stable")
        entry = lambda i: {"state": labels[i][0], "layer": labels[i][1], "unit": labels[i][2],  # noqa: E731
                           "corr": round(float(r[i]), 4)}
        per_layer = {}
        for i in order:
            per_layer.setdefault((labels[i][0], labels[i][1]), i)
        found[name] = {"occurs": True, "units": [entry(i) for i in order[:keep]],
                       "best_per_layer": [entry(i) for i in per_layer.values()]}
    return found


def saturation(model, states):
    """Per layer: for each sigmoid gate (LSTM, GRU) or for h (the tanh cell), the fraction of the
    time each unit spends left- and right-saturated, and a histogram of |h|."""
    gates = model.cells[0].saturating
    lo, hi = (SATURATED, 1 - SATURATED) if gates else (-TANH_SATURATED, TANH_SATURATED)
    out = []
    for l in range(model.num_layers):
        h = np.abs(states["h"][l])
        layer = {"layer": l, "abs_h_hist": np.histogram(h, bins=20, range=(0, 1))[0].tolist(),
                 "frac_abs_h_saturated": round(float((h > TANH_SATURATED).mean()), 4), "gates": {}}
        for name in gates or ("h",):
            v = states[name][l]  # (N, H)
            layer["gates"][name] = {"left": np.round((v < lo).mean(0), 4).tolist(),
                                    "right": np.round((v > hi).mean(0), 4).tolist()}
        out.append(layer)
    return {"left_below": lo, "right_above": hi, "layers": out}


def quantized(states):
    """Activations for the page's unit picker as int8 (-127..127 for -1..1; all of them are in
    [-1, 1] except an LSTM's c, which is squashed by tanh first), units in unit_columns order."""
    acts, _ = unit_columns({k: (np.tanh(v) if k == "c" else v) for k, v in states.items() if k in ("h", "c")})
    return np.round(np.clip(acts, -1, 1) * 127).astype(np.int8)  # (N, U)


def analyse(model, vocab, text, code=None):
    """Everything the page shows, as plain data (plus the int8 activation matrix). code: whether
    the code features apply (default: looks_like_code(text))."""
    ids = vocab.encode(text)
    states = trace(model, ids)
    return {
        "surprise": surprise(model, ids),
        "search": search_units(states, text_features(text, looks_like_code(text) if code is None else code)),
        "saturation": saturation(model, states),
    }, quantized(states)


def page_data(model, vocab, ckpt, ckpt_path, text, source):
    """analyse() plus what the page's header and unit picker need. Returns (data, activations)."""
    of_code = (ckpt.get("data_source") or {}).get("name") == code_corpus.NAME
    found, acts = analyse(model, vocab, text, code=of_code or looks_like_code(text))
    groups = [(s, l) for s in model.state_names for l in range(model.num_layers)]
    header = {"checkpoint": str(ckpt_path), "step": ckpt.get("step"), "val_loss": ckpt.get("last_val"),
              "cell": model.cell, "num_layers": model.num_layers, "hidden_size": model.hidden_size,
              "parameters": sum(p.numel() for p in model.parameters()), "source": source,
              "corpus": describe_source(ckpt["data_source"]) if ckpt.get("data_source") else None,
              "chars": len(text), "mean_bits": float(np.mean(found["surprise"]["bits"]))}
    data = dict(found, header=header, text=text, vocab=list(vocab.chars), groups=groups,
                units=[[s, l, u] for s, l in groups for u in range(model.hidden_size)])
    return data, acts
