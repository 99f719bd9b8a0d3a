"""Proves dynamic evaluation (dynamic.py, `charrnn sample --score FILE --dynamic`, train.dynamic_eval):

- a zero learning rate (and no decay) gives exactly the plain score, for each cell, and every
  segment is scored before the weights learn from it;
- on a text repeated twice, the adapting model scores the second copy better than the first, and
  better than the plain model scores it;
- the model it was given and the checkpoint file are unchanged, byte for byte;
- the CLI reports it as its own figure ("dynamic loss"), refuses --dynamic without --score, and
  train.dynamic_eval logs loss/val_dynamic apart from loss/val.

Run: pytest tests/test_dynamic.py
"""
import hashlib

import pytest
import torch

from charrnn_torch import CharRNN
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
