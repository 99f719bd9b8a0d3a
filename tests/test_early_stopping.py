"""Proves early stopping (train.patience, train.min_delta): a run stops after that many
evaluations in a row whose loss/val does not beat the best by more than min_delta, says why in one
line, and keeps best.pt from the best evaluation; patience 0 never stops a run; max_steps and the
time budget still end it first when they come first; a resumed run keeps its count (and a
checkpoint from before early stopping resumes with the count at 0); every bad value is one
`error:` line, exit 2.

The validation losses are scripted (Trainer.evaluate is replaced), so what is proven is the rule,
not how a tiny model happens to train.

Run: pytest tests/test_early_stopping.py
"""
import pytest
import torch

from charrnn_torch.cli import main
from charrnn_torch.training import trainer
from charrnn_torch.training.config import build_config
from conftest import tiny_overrides


def scripted(monkeypatch, losses):
    """loss/val at each step (evaluations every 2 steps): losses[k] at step 2(k+1)."""
    monkeypatch.setattr(trainer.Trainer, "evaluate", lambda self: losses[self.state.step // 2 - 1])


def overrides(corpus_file, out, **extra):
    return tiny_overrides(corpus_file, out, **{"train.max_steps": 40, "train.eval_interval": 2,
                                              "train.sample_interval": 0, "model.hidden_size": 7, **extra})


def run(corpus_file, out, **extra):
    lines = []
    summary = trainer.train(build_config({}, overrides(corpus_file, out, **extra)), progress=False, log=lines.append)
    return summary, lines


def test_patience_stops_after_n_evaluations_without_a_gain_of_min_delta(tmp_path, corpus_file, monkeypatch):
    # gains of more than 0.1 reset the count; 2.45 is a new best (best.pt) but not 0.1 below 2.5
    scripted(monkeypatch, [3.0, 2.5, 2.6, 2.45, 2.7, 1.0, 1.0])
    summary, lines = run(corpus_file, tmp_path / "r", **{"train.patience": 3, "train.min_delta": 0.1})
    assert summary["step"] == 10 and summary["stopped_early"] and summary["best_val"] == 2.45
    assert [v for _, v in summary["val_log"]] == [3.0, 2.5, 2.6, 2.45, 2.7]
    assert lines[-1] == ("early stop at step 10: loss/val has not beaten 2.5000 by more than train.min_delta=0.1 "
                         "in 3 evaluations (train.patience=3); best.pt holds the best, 2.4500")
    assert torch.load(tmp_path / "r" / "best.pt", weights_only=True)["step"] == 8
    assert torch.load(tmp_path / "r" / "ckpt.pt", weights_only=True)["step"] == 10


def test_without_patience_or_with_more_than_the_run_max_steps_ends_it(tmp_path, corpus_file, monkeypatch):
    worse = [3.0 + k for k in range(20)]
    scripted(monkeypatch, worse)
    for name, extra in (("off", {}), ("long", {"train.patience": 30})):
        summary, lines = run(corpus_file, tmp_path / name, **{"train.max_steps": 12, **extra})
        assert summary["step"] == 12 and not summary["stopped_early"], name
        assert not any(line.startswith("early stop") for line in lines)


def test_the_time_budget_still_ends_a_patient_run(tmp_path, corpus_file, monkeypatch):
    scripted(monkeypatch, [3.0 - 0.1 * k for k in range(20)])  # always better: patience never ends it
    summary, _ = run(corpus_file, tmp_path / "r", **{"train.patience": 1, "train.max_minutes": 1e-9})
    assert summary["step"] == 1 and not summary["stopped_early"]


def test_a_resumed_run_keeps_its_count(tmp_path, corpus_file, monkeypatch, capsys):
    scripted(monkeypatch, [3.0, 3.1, 3.2, 3.3, 3.4, 3.5])
    out = tmp_path / "r"
    assert main(["train", *overrides(corpus_file, out, **{"train.max_steps": 6, "train.patience": 3}),
                 "--no-progress"]) == 0
    ck = torch.load(out / "ckpt.pt", weights_only=True)
    assert (ck["evals_since_gain"], ck["gain_best"]) == (2, 3.0)
    assert main(["train", "--resume", str(out), "train.max_steps=40", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "early stop at step 8: loss/val has not beaten 3.0000 in 3 evaluations (train.patience=3)" in printed
    assert torch.load(out / "ckpt.pt", weights_only=True)["step"] == 8


def test_a_checkpoint_from_before_early_stopping_starts_its_count_at_its_best():
    state = trainer.RunState.from_checkpoint({"step": 4, "best_val": 2.0, "last_val": 2.5, "smooth_loss": 3.0,
                                              "log_acc": {"loss": 0.0, "norm": 0.0, "n": 0}, "nonfinite_total": 0})
    assert (state.evals_since_gain, state.gain_best, state.train_seconds) == (0, 2.0, 0.0)


@pytest.mark.parametrize("value,needle", [
    ("train.patience=-1", "train.patience: must be >= 0 (0: no early stopping), got -1"),
    ("train.patience=2.5", "train.patience: expected an integer, got 2.5"),
    ("train.min_delta=-0.01", "train.min_delta: must be >= 0, got -0.01"),
    ("train.min_delta=.nan", "train.min_delta: must be a finite number, got nan"),
    ("train.min_delta=some", "train.min_delta: expected a number, got 'some'"),
])
def test_bad_values_are_one_error_line(tmp_path, corpus_file, capsys, value, needle):
    assert main(["train", *overrides(corpus_file, tmp_path / "r"), value, "--no-progress"]) == 2
    assert capsys.readouterr().err == f"error: {needle}\n"
    assert not (tmp_path / "r").exists()
