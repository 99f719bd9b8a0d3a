"""Proves ``charrnn fill`` and ``Model.fill``: every mask replaced and nothing else changed; the
surest gap filled first and each fill conditioning the next (a bidirectional model's probabilities
recomputed by hand); a left-to-right model's left-context probability, and its right-context
rescoring equal to the posterior computed by brute force over the candidates; windows filled on
their own; and one ``error:`` line, exit 2, for every bad request (no mask, a mask that is not one
character, characters outside the vocabulary, --rescore with a bidirectional model), and for
sample, --score, export and visualize given a bidirectional checkpoint (each naming fill).
Models are small and random (float64), or trained for a few steps for the CLI."""
import math

import pytest
import torch

import charrnn_torch as cr
from charrnn_torch import CharRNN
from charrnn_torch.cli import main
from charrnn_torch.data.vocab import Vocab
from charrnn_torch.sampling import fill
from charrnn_torch.training.config import build_config
from charrnn_torch.training.trainer import train
from conftest import tiny_overrides

CHARS = "\n abcdefghijk"
VOCAB = Vocab(CHARS)


def random_model(bidirectional, cell="gru", seed=0):
    torch.manual_seed(seed)
    model = CharRNN(len(CHARS), 7, 2, cell=cell, impl="fused", bidirectional=bidirectional).double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.8)
    return model.eval()


def probs(model, text):
    """The model's distribution at every position of text, from its own forward."""
    ids = VOCAB.encode(text)[None]
    if model.bidirectional:
        return torch.softmax(model(ids)[0][0], -1)
    x = torch.cat([VOCAB.encode("\n")[None], ids], 1)
    return torch.softmax(model(x[:, :-1])[0][0], -1)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_only_the_gaps_change_and_each_is_reported(bidirectional):
    text = "ab_d e_g\nh_jk _a"
    out = fill.fill(random_model(bidirectional), VOCAB, text, "_", top_k=3)
    assert len(out["text"]) == len(text) and "_" not in out["text"]
    assert all(a == b for a, b in zip(text, out["text"]) if a != "_")
    assert [g["position"] for g in out["gaps"]] == [i for i, c in enumerate(text) if c == "_"]
    assert sorted(g["order"] for g in out["gaps"]) == list(range(4))
    for g in out["gaps"]:
        assert g["char"] == out["text"][g["position"]] == g["candidates"][0][0]
        assert g["prob"] == g["candidates"][0][1] and len(g["candidates"]) == 3
        assert [q for _, q in g["candidates"]] == sorted((q for _, q in g["candidates"]), reverse=True)


def test_surest_first_and_each_fill_conditions_the_next():
    model = random_model(True)
    text = "abc_efg h_jk"
    out = fill.fill(model, VOCAB, text, "_")
    first, second = sorted(out["gaps"], key=lambda g: g["order"])
    p0 = probs(model, text.replace("_", "\n"))  # round 0: a gap's own character is hidden from it
    assert first["prob"] == pytest.approx(p0[first["position"]].max().item(), rel=1e-12)
    assert first["prob"] >= p0[second["position"]].max().item()
    with_first = list(text)
    with_first[first["position"]] = first["char"]
    p1 = probs(model, "".join(with_first).replace("_", "\n"))
    assert second["prob"] == pytest.approx(p1[second["position"]].max().item(), rel=1e-12)
    assert second["char"] == CHARS[p1[second["position"]].argmax()]


def test_a_left_to_right_model_from_its_left_context():
    model = random_model(False, cell="lstm")
    out = fill.fill(model, VOCAB, "abc_efg", "_", how=fill.Fill(rescore=0))
    p = probs(model, "abc\n")  # at position 3: the distribution of the gap given "abc"
    assert out["gaps"][0]["prob"] == pytest.approx(p[-1].max().item(), rel=1e-12)


def test_right_context_rescoring_is_the_posterior_over_the_candidates():
    model = random_model(False, cell="rnn")
    left, right, R, K = "abc", "efgh", 4, 3
    out = fill.fill(model, VOCAB, left + "_" + right, "_", top_k=R, how=fill.Fill(rescore=K, candidates=R))
    p_left = probs(model, left + "\n")[-1]
    cands = p_left.topk(R).indices
    scores = []
    for c in cands:
        full = left + CHARS[c] + right
        p = probs(model, full)
        tail = sum(math.log(p[len(left) + j, VOCAB.stoi[full[len(left) + j]]].item()) for j in range(1, K + 1))
        scores.append(math.log(p_left[c].item()) + tail)
    post = torch.softmax(torch.tensor(scores), 0)
    got = dict(out["gaps"][0]["candidates"])
    for c, q in zip(cands, post):
        assert got[CHARS[c]] == pytest.approx(q.item(), rel=1e-5)


def test_windows_are_filled_on_their_own():
    model = random_model(True)
    a, b = "ab_defghij", "k_cdefgh"
    whole = fill.fill(model, VOCAB, a + b, "_", how=fill.Fill(window=len(a)))
    assert whole["text"] == fill.fill(model, VOCAB, a, "_")["text"] + fill.fill(model, VOCAB, b, "_")["text"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A bidirectional and a left-to-right run of a few steps."""
    root = tmp_path_factory.mktemp("fill")
    corpus = root / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog.\n" * 60)
    out = {}
    for name, extra in (("bi", {"model.bidirectional": "true", "train.stateful": "false"}), ("fwd", {})):
        cfg = build_config({}, tiny_overrides(corpus, root / name, **{"train.max_steps": 6, **extra}))
        train(cfg, progress=False, log=lambda *a: None)
        out[name] = root / name
    return out


def one_error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_the_command_fills_and_lists_candidates(runs, capsys):
    for run in runs.values():
        assert main(["fill", "--checkpoint", str(run), "--text", "th_ qu_ck", "--top-k", "2"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert len(lines[0]) == 9 and "_" not in lines[0] and lines[0][:2] == "th"
        assert lines[1].startswith("gap at 2 (filled ") and lines[2].startswith("gap at 6 (filled ")


def test_bad_requests_are_one_error_line(runs, capsys, tmp_path):
    bi = ["fill", "--checkpoint", str(runs["bi"])]
    assert "has no '_' to fill" in one_error(capsys, [*bi, "--text", "the fox"])
    assert "--mask-char must be a single character, got '__'" in one_error(capsys, [*bi, "--text", "a_", "--mask-char", "__"])
    assert "outside the model's vocabulary: 'Z'" in one_error(capsys, [*bi, "--text", "Zo_"])
    assert "--rescore is for left-to-right models" in one_error(capsys, [*bi, "--text", "t_e", "--rescore", "3"])
    one_error(capsys, [*bi])  # neither --text nor --text-file


def test_left_to_right_commands_refuse_a_bidirectional_checkpoint(runs, capsys, tmp_path):
    (tmp_path / "t.txt").write_text("the fox")
    ck = ["--checkpoint", str(runs["bi"])]
    for argv in (["sample", *ck], ["sample", *ck, "--score", str(tmp_path / "t.txt")],
                 ["export", *ck, "--format", "html", "--out", str(tmp_path / "p.html")],
                 ["visualize", *ck, "--out", str(tmp_path / "viz")]):
        err = one_error(capsys, argv)
        assert "is a bidirectional model" in err and "charrnn fill" in err, argv
    assert not (tmp_path / "p.html").exists() and not (tmp_path / "viz").exists()


def test_the_python_api(runs):
    model = cr.load(runs["bi"])
    out = model.fill("th_ fox", top_k=2)
    assert out["text"][:2] == "th" and len(out["gaps"][0]["candidates"]) == 2
    with pytest.raises(cr.UserError, match="charrnn fill"):
        model.sample("the")
    with pytest.raises(cr.UserError, match="rescore=-1"):
        cr.load(runs["fwd"]).fill("th_", rescore=-1)
