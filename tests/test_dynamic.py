"""Proves dynamic evaluation (dynamic.py, `charrnn sample --score FILE --dynamic`, train.dynamic_eval):

- a zero learning rate (and no decay) gives exactly the plain score, for each cell, and every
  segment is scored before the weights learn from it;
- the whole update, at the default settings (the RMS statistics from the training text, the step
  lr * g / (RMS + floor), the pull back toward the trained weights, capped at 1), equals a numpy
  twin built on the numpy reference's gradients, segment by segment, to 1e-9 in float64, for the
  tanh cell and the LSTM; with a larger decay, where the cap binds for some weights, too;
- on a text repeated twice, the adapting model scores the second copy better than the first, and
  better than the plain model scores it;
- the model it was given and the checkpoint file are unchanged, byte for byte;
- the CLI reports it as its own figure ("dynamic loss"), refuses --dynamic without --score, and
  train.dynamic_eval logs loss/val_dynamic apart from loss/val.

Run: pytest tests/test_dynamic.py
"""
import hashlib

import numpy as np
import pytest
import torch

from charrnn_torch import CharRNN
from charrnn_torch.model import reference
from charrnn_torch.sampling import dynamic
from charrnn_torch.cli import main
from charrnn_torch.training.config import build_config
from charrnn_torch.data.vocab import Vocab
from charrnn_torch.model.cells import CELLS
from charrnn_torch.sampling.sample import char_losses, score
from charrnn_torch.training.trainer import train
from conftest import read_scalars, tiny_overrides

TEXT = "the cat sat on the mat. a dog ran far. \n" * 3


def _model(vocab, cell):
    torch.manual_seed(0)
    return CharRNN(len(vocab), 16, 2, cell=cell, impl="fused").double()


@pytest.mark.parametrize("cell", CELLS)
def test_zero_learning_rate_is_the_plain_score(cell):
    vocab = Vocab.from_text(TEXT)
    model = _model(vocab, cell)
    ids = vocab.encode(TEXT)
    settings = dynamic.Settings(lr=0.0, decay=0.0, seq_len=7, stat_segments=5)
    stats = dynamic.gradient_stats(model, ids, settings)
    total, count = dynamic.dynamic_score(model, ids, stats, settings)
    assert count == len(ids) - 1
    assert abs(total - score(model, vocab, TEXT)["total_nats"]) <= 1e-12 * total


def numpy_segments(ids, seq_len, limit=None):
    """(x, y) of each segment, (1, <= seq_len) int arrays, as the docstring of dynamic.py cuts them."""
    n = len(ids) - 1
    starts = list(range(0, n, seq_len))[:limit]
    return [(ids[None, i:i + min(seq_len, n - i)], ids[None, i + 1:i + 1 + min(seq_len, n - i)]) for i in starts]


def numpy_dynamic(params, train_ids, ids, settings, L, H, lstm):
    """Dynamic evaluation from its definition (dynamic.py's docstring), on the numpy reference's
    losses and gradients: each segment's summed loss, in order."""
    def zeros():
        h = np.zeros((L, 1, H))
        return (h, h.copy()) if lstm else h
    squares, state, n = {k: np.zeros_like(v) for k, v in params.items()}, zeros(), 0
    for x, y in numpy_segments(train_ids, settings.seq_len, settings.stat_segments):
        _, g, _, state, _ = reference.loss_and_grads(params, x, y, state)
        for k in squares:
            squares[k] += (g[k] / y.size) ** 2  # the gradient of the per-character loss
        n += 1
    rms = {k: np.sqrt(sq / n) for k, sq in squares.items()}
    mean_rms = max(np.concatenate([r.ravel() for r in rms.values()]).mean(), dynamic.EPS)
    pull = {k: np.minimum(settings.decay * r / mean_rms, 1.0) for k, r in rms.items()}
    denom = {k: r + dynamic.RMS_FLOOR * mean_rms for k, r in rms.items()}
    theta0, theta, state, losses = params, {k: v.copy() for k, v in params.items()}, zeros(), []
    for x, y in numpy_segments(ids, settings.seq_len):
        loss, g, _, state, _ = reference.loss_and_grads(theta, x, y, state)
        losses.append(loss)
        theta = {k: theta[k] - settings.lr * (g[k] / y.size) / denom[k] + pull[k] * (theta0[k] - theta[k])
                 for k in theta}
    return losses, pull


@pytest.mark.parametrize("cell,decay", [("rnn", None), ("lstm", None), ("rnn", 0.5)])  # None: the default
def test_the_whole_update_equals_a_numpy_twin(cell, decay):
    V, H, L = 11, 7, 2
    rng = np.random.default_rng(3)
    params = reference.init_params(V, H, L, rng=rng, scale=0.5, cell=cell)
    model = CharRNN(V, H, L, cell=cell, impl="fused").double()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})
    train_ids, ids = rng.integers(0, V, 6 * 50 + 20), rng.integers(0, V, 8 * 50 + 13)  # whole and partial segments
    settings = dynamic.Settings() if decay is None else dynamic.Settings(decay=decay)
    stats = dynamic.gradient_stats(model, torch.from_numpy(train_ids), settings)
    got = [nats for nats, _ in dynamic.segment_losses(model, torch.from_numpy(ids), stats, settings)]
    want, pull = numpy_dynamic(params, train_ids, ids, settings, L, H, cell == "lstm")
    assert len(got) == len(want) == 9
    assert np.abs(np.array(got) - want).max() <= 1e-9 * max(want)
    capped = sum(int((p == 1.0).sum()) for p in pull.values())
    assert (capped > 0) == (decay is not None)  # the default never reaches the cap here; decay 0.5 does


def test_each_segment_is_scored_before_the_weights_learn_from_it():
    # The first segment meets the trained weights, whatever the learning rate: no peeking.
    vocab = Vocab.from_text(TEXT)
    model = _model(vocab, "lstm")
    ids = vocab.encode(TEXT)[:30]
    settings = dynamic.Settings(lr=0.05, decay=0.0, seq_len=40, stat_segments=1)
    total, count = dynamic.dynamic_score(model, ids, dynamic.gradient_stats(model, ids, settings), settings)
    assert count == 29 and abs(total - float(char_losses(model, ids).sum())) <= 1e-12 * total


def test_a_repeated_text_scores_better_the_second_time():
    # A text the untrained model cannot predict (each character fixed by the one before, through a
    # random permutation), twice: adapting to the first copy pays on the second.
    g = torch.Generator().manual_seed(0)
    vocab = Vocab.from_text("abcdefghijklmnop")
    perm, seq = torch.randperm(len(vocab), generator=g).tolist(), [0]
    while len(seq) < 300:
        seq.append(perm[seq[-1]])
    half = vocab.decode(seq)
    ids = vocab.encode(half + half)
    model = _model(vocab, "gru")
    settings = dynamic.Settings(lr=3e-3, decay=0.0, seq_len=20, stat_segments=10)
    stats = dynamic.gradient_stats(model, ids[:300], settings)
    adapted = _per_char(model, ids, stats, settings)
    plain = char_losses(model, ids)
    first, second = adapted[:299].mean(), adapted[299:].mean()
    assert second < first - 0.5  # it learned the first copy
    assert second < plain[299:].mean() - 1.0  # which the plain model cannot


def _per_char(model, ids, stats, settings):
    """Per-character losses under dynamic evaluation: each segment's mean, for each of its characters."""
    return torch.tensor([nats / n for nats, n in dynamic.segment_losses(model, ids, stats, settings)
                         for _ in range(n)])


def test_the_model_given_is_left_alone():
    vocab = Vocab.from_text(TEXT)
    model = _model(vocab, "lstm")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    dynamic.score(model, vocab, TEXT, vocab.encode(TEXT), dynamic.Settings(lr=0.1, seq_len=9, stat_segments=3))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and all(p.grad is None for p in model.parameters())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dyn")
    corpus = tmp / "corpus.txt"
    corpus.write_text(TEXT * 20)
    cfg = build_config({}, tiny_overrides(corpus, tmp / "run", **{"train.max_steps": 20, "train.dynamic_eval": "true",
                                                                   "model.cell": "gru"}))
    summary = train(cfg, progress=False, log=lambda *a: None)
    return tmp, summary


def test_cli_reports_its_own_figure_and_leaves_the_checkpoint(run, capsys):
    tmp, _ = run
    (tmp / "text.txt").write_text(TEXT * 4)
    ckpt = tmp / "run" / "best.pt"
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert main(["sample", "--checkpoint", str(ckpt), "--score", str(tmp / "text.txt"), "--dynamic"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("dynamic loss ") and "characters scored" in out
    assert main(["sample", "--checkpoint", str(ckpt), "--score", str(tmp / "text.txt"), "--dynamic",
                 "--dynamic-lr", "0"]) == 0
    zero = capsys.readouterr().out
    assert main(["sample", "--checkpoint", str(ckpt), "--score", str(tmp / "text.txt")]) == 0
    plain = capsys.readouterr().out
    assert zero.split()[2] == plain.split()[1]  # lr 0: the plain loss, to the digits printed
    assert hashlib.sha256(ckpt.read_bytes()).hexdigest() == digest


def test_dynamic_needs_score(run, capsys):
    tmp, _ = run
    assert main(["sample", "--checkpoint", str(tmp / "run"), "--dynamic"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --dynamic changes how --score scores a file") and err.count("\n") == 1


def test_training_logs_val_dynamic_apart(run):
    tmp, summary = run
    _, scalars = read_scalars(tmp / "run")
    assert [s for s, _ in scalars["loss/val_dynamic"]] == [summary["step"]]
    assert scalars["loss/val_dynamic"][0][1] == pytest.approx(summary["val_dynamic"])
    assert summary["val_dynamic"] != summary["val_loss"]
    assert all(v != summary["val_dynamic"] for _, v in scalars["loss/val"])
