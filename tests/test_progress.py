"""Proves that what a user watches during a run tells the truth:

- the training bar counts steps when the steps end the run, and the seconds of the training
  budget when train.max_minutes does (its total and ETA then say when the run ends, not a
  million-step ceiling); it fills whichever ends the run first;
- evaluation shows a bar of its own, over the validation windows it really scores, and
  train.eval_chars caps them;
- the final line says what the run's time went on: training (against the budget) and evaluation.
"""
import re

import pytest
import torch

from charrnn_torch.data import batchers
from charrnn_torch.training.config import TrainConfig, build_config
from charrnn_torch.training.logger import BarCounts
from charrnn_torch.training.trainer import train
from conftest import run_script, tiny_overrides


def bar_states(stderr, desc):
    """Every "n/total" a tqdm bar called desc drew, in order."""
    return [(float(n), float(t)) for n, t in re.findall(rf"{desc}:[^\r\n]*?\| ?([\d.]+)/([\d.]+)", stderr)]


def test_a_step_run_counts_steps(tmp_path, corpus_file):
    r = run_script("train.py", *tiny_overrides(corpus_file, tmp_path / "run", **{"train.max_steps": 12}))
    assert r.returncode == 0, r.stderr
    states = bar_states(r.stderr, "train")
    assert states and {t for _, t in states} == {12} and states[-1][0] == 12


def test_a_budgeted_run_counts_the_budget(tmp_path, corpus_file):
    budget_s = 3.0
    r = run_script("train.py", *tiny_overrides(corpus_file, tmp_path / "run", **{
        "train.max_steps": 1_000_000, "train.max_minutes": budget_s / 60, "train.eval_interval": 100_000}))
    assert r.returncode == 0, r.stderr
    states = bar_states(r.stderr, "train")
    assert states and {t for _, t in states} == {budget_s}  # not 1000000 steps
    assert "s of training" in r.stderr and states[-1][0] == budget_s
    assert [n for n, _ in states] == sorted(n for n, _ in states)
    line = r.stdout.strip().splitlines()[-1]
    assert re.search(r"trained [\d.]+ s \(the budget: 3\.0 s\), evaluated [\d.]+ s \(1 pass over [\d,]+ characters",
                     line), line


def test_the_bar_fills_whichever_ends_the_run():
    cfg = TrainConfig(max_steps=100, max_minutes=2.0)
    counts = BarCounts(cfg)
    assert counts.position(0, 0.0) == 0
    assert counts.position(10, 60.0) == 60.0  # half the budget, a tenth of the steps: the budget leads
    assert counts.position(50, 6.0) == 60.0  # half the steps, a twentieth of the budget: the steps lead
    assert counts.position(100, 30.0) == 120.0  # the steps ended the run: the bar is full
    assert counts.position(7, 500.0) == 120.0  # never past its total
    steps = BarCounts(TrainConfig(max_steps=100))
    assert steps.position(37, 1e9) == 37 and steps.postfix(37) == {}


def test_a_resumed_budgeted_bar_starts_where_the_run_stopped():
    counts = BarCounts(TrainConfig(max_steps=1_000_000, max_minutes=1.0))
    bar = counts.bar(start_step=40, start_seconds=15.0, progress=True)
    assert (bar.total, bar.n) == (60.0, 15.0)
    counts.update(bar, 41, 15.5)
    assert bar.n == 15.5
    bar.close()


@pytest.mark.parametrize("n,streams,seq_len", [(1000, 4, 16), (1001, 3, 7), (65, 4, 15), (66, 4, 15), (40, 1, 100)])
def test_eval_window_count_is_what_eval_windows_yields(n, streams, seq_len):
    ids = torch.arange(n)
    assert batchers.eval_window_count(n, streams, seq_len) == len(list(batchers.eval_windows(ids, streams, seq_len)))


@pytest.mark.slow
def test_evaluation_shows_its_progress_and_eval_chars_caps_it(tmp_path, corpus_file):
    full = run_script("train.py", *tiny_overrides(corpus_file, tmp_path / "full", **{"train.max_steps": 10}))
    capped = run_script("train.py", *tiny_overrides(corpus_file, tmp_path / "capped", **{
        "train.max_steps": 10, "train.eval_chars": 300}))
    assert full.returncode == 0 and capped.returncode == 0, full.stderr + capped.stderr
    n_val = len(corpus_file.read_text()) - int(len(corpus_file.read_text()) * 0.9)
    for r, chars in ((full, n_val), (capped, 300)):
        streams = batchers.eval_stream_count(chars, 4, 16, 1)
        totals = {t for _, t in bar_states(r.stderr, "evaluate")}
        assert totals == {batchers.eval_window_count(chars, streams, 16)}, (chars, r.stderr[-500:])
        assert f"over {chars:,} characters" in r.stdout.strip().splitlines()[-1]


def test_eval_chars_scores_that_many_characters(tmp_path, corpus_file):
    cfg = build_config({}, tiny_overrides(corpus_file, tmp_path / "r", **{"train.max_steps": 4,
                                                                        "train.eval_chars": 250}))
    s = train(cfg, progress=False, log=lambda *a: None)
    assert s["eval_chars"] == 250 and s["evaluations"] == 1 and s["eval_seconds"] > 0


def test_eval_chars_is_checked(tmp_path):
    from charrnn_torch.errors import UserError
    with pytest.raises(UserError, match="train.eval_chars: must be >= 0"):
        build_config({}, ["train.eval_chars=-1"])
