"""Proves the training command end to end on CPU: a short run on a small text writes
config.yaml, weights-only checkpoints and TensorBoard events with every promised tag,
its training loss falls, and the learning-rate schedules have the promised shape.

Run: pytest tests/test_train.py
"""
import math

import pytest
import torch
import yaml

from charrnn_torch.training import checkpoint
from charrnn_torch.training.config import build_config
from charrnn_torch.training.optim import lr_factor
from charrnn_torch.training.trainer import train
from conftest import read_scalars, run_script, tiny_overrides

TAGS = {"loss/train", "loss/train_smooth", "loss/val", "bpc/val", "lr", "grad_norm", "throughput/chars_per_sec"}


def test_end_to_end_cli_run(tmp_path, corpus_file):
    out = tmp_path / "run"
    r = run_script("train.py", "--config", "shakespeare.yaml", "--no-progress", *tiny_overrides(corpus_file, out))
    assert r.returncode == 0, r.stderr
    assert "val loss" in r.stdout and "done: 30 steps" in r.stdout

    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["model"]["hidden_size"] == 32 and cfg["train"]["max_steps"] == 30

    for name in ("ckpt.pt", "best.pt"):
        ck = torch.load(out / name, weights_only=True)
        assert ck["step"] in (10, 20, 30) and ck["vocab"] == sorted(set(corpus_file.read_text()))
        assert set(ck) >= {"model", "model_args", "vocab", "optimizer", "scheduler", "step", "data", "hidden",
                           "rng", "config", "best_val"}
    assert torch.load(out / "ckpt.pt", weights_only=True)["step"] == 30

    acc, scalars = read_scalars(out)
    assert TAGS <= set(scalars)
    assert [s for s, _ in scalars["loss/val"]] == [10, 20, 30]
    assert [s for s, _ in scalars["loss/train"]] == [5, 10, 15, 20, 25, 30]
    for (_, lv), (_, bv) in zip(scalars["loss/val"], scalars["bpc/val"]):
        assert bv == pytest.approx(lv / math.log(2), rel=1e-6)
    assert {"samples/text_summary", "config/text_summary"} <= set(acc.Tags()["tensors"])
    assert any(t.startswith("params/") for t in acc.Tags()["histograms"])
    assert any(t.startswith("grads/") for t in acc.Tags()["histograms"])


def test_training_loss_falls(tmp_path, corpus_file):
    cfg = build_config({}, tiny_overrides(corpus_file, tmp_path / "r", **{"train.max_steps": 60}))
    summary = train(cfg, progress=False, log=lambda *a: None)
    losses = [v for _, v in summary["train_log"]]
    assert losses[-1] < 0.6 * losses[0], losses
    assert summary["val_loss"] < math.log(len(set(corpus_file.read_text())))


def test_each_optimizer_trains(tmp_path, corpus_file):
    for opt, lr in (("adagrad", 0.1), ("adam", 0.01), ("adamw", 0.01), ("rmsprop", 0.003), ("sgd", 0.3)):
        cfg = build_config({}, tiny_overrides(corpus_file, tmp_path / opt, **{
            "train.optimizer": opt, "train.lr": lr, "train.max_steps": 40, "train.sample_interval": 0}))
        losses = [v for _, v in train(cfg, progress=False, log=lambda *a: None)["train_log"]]
        assert losses[-1] < losses[0], (opt, losses)


def test_schedules():
    t = build_config({}, ["train.max_steps=100", "train.warmup_steps=10", "train.min_lr_ratio=0.1"]).train
    assert lr_factor(0, t) == pytest.approx(0.1) and lr_factor(9, t) == pytest.approx(1.0)
    assert lr_factor(10, t) == pytest.approx(1.0)
    assert lr_factor(55, t) == pytest.approx(0.55)  # cosine midpoint between 1 and 0.1
    assert lr_factor(100, t) == pytest.approx(0.1)
    t.lr_schedule, t.lr_step_size, t.lr_gamma = "step", 30, 0.5
    assert [lr_factor(s, t) for s in (10, 39, 40, 70)] == [1.0, 1.0, 0.5, 0.25]
    t.lr_schedule = "constant"
    assert lr_factor(99, t) == 1.0


def test_stateful_training_carries_state(tmp_path, corpus_file, monkeypatch):
    """The h0 handed to step i+1 is step i's final state, detached, and None after a wrap."""
    from charrnn_torch.data import batchers, corpus, vocab
    from charrnn_torch.model.cells import CharRNN
    seen = []
    orig = CharRNN.forward

    def spy(self, x, h0=None):
        logits, h = orig(self, x, h0)
        if self.training:
            seen.append((None if h0 is None else h0.clone(), h.detach().clone(), h0 is not None and h0.requires_grad))
        return logits, h

    monkeypatch.setattr(CharRNN, "forward", spy)
    cfg = build_config({}, tiny_overrides(corpus_file, tmp_path / "r", **{"train.sample_interval": 0}))
    text = corpus_file.read_text()
    train_ids = corpus.split(vocab.Vocab.from_text(text).encode(text), cfg.data.val_fraction)[0]
    epoch = batchers.StreamBatcher(train_ids, cfg.train.batch_size, cfg.train.seq_len).steps_per_epoch
    cfg.train.max_steps, cfg.train.eval_interval = epoch + 3, epoch + 3  # past one wrap of the streams
    train(cfg, progress=False, log=lambda *a: None)
    assert len(seen) == epoch + 3
    for i, ((_, h_prev, _), (h0, _, grad)) in enumerate(zip(seen, seen[1:]), start=1):
        if i % epoch == 0:
            assert h0 is None, f"step {i + 1} follows a wrap: its state must start at zero"
        else:
            assert torch.equal(h0, h_prev) and not grad
    assert seen[0][0] is None


def test_checkpoint_loads_weights_only_and_samples(tmp_path, corpus_file):
    out = tmp_path / "r"
    cfg = build_config({}, tiny_overrides(corpus_file, out, **{"train.max_steps": 10}))
    train(cfg, progress=False, log=lambda *a: None)
    ck = checkpoint.load(out / "ckpt.pt")
    assert isinstance(ck["hidden"], torch.Tensor) and ck["hidden"].shape == (1, 4, 32)
    from charrnn_torch.data.vocab import Vocab
    from charrnn_torch.model.cells import CharRNN
    from charrnn_torch.sampling.sample import Sampling, generate
    model = CharRNN(**ck["model_args"])
    model.load_state_dict(ck["model"])
    text = generate(model, Vocab(ck["vocab"]), "the", 40, sampling=Sampling(seed=0))
    assert text.startswith("the") and len(text) == 43 and set(text) <= set(ck["vocab"])


def test_cosine_follows_the_time_budget():
    """With train.max_minutes the cosine's progress is the larger of the step and time fractions."""
    t = build_config({}, ["train.max_steps=1000", "train.max_minutes=2", "train.min_lr_ratio=0.1"]).train
    assert lr_factor(10, t, train_seconds=60.0) == pytest.approx(0.55)  # half the budget: cosine midpoint
    assert lr_factor(10, t, train_seconds=120.0) == pytest.approx(0.1)  # budget spent: the floor
    assert lr_factor(500, t, train_seconds=1.0) == pytest.approx(0.55)  # steps ahead of time: steps decide
    t.max_minutes = 0.0
    assert lr_factor(10, t, train_seconds=1e9) == lr_factor(10, t)  # no budget: time is ignored


def test_max_minutes_stops_with_final_eval_and_resume_keeps_time(tmp_path, corpus_file):
    """A wall-clock budget ends the run at the first step past it, with a final evaluation and
    checkpoint, however fast the machine; a resumed run counts the time already spent."""
    out = tmp_path / "r"
    budget = 0.005  # 0.3 s of training
    cfg = build_config({}, tiny_overrides(corpus_file, out, **{
        "train.max_steps": 5000, "train.max_minutes": budget, "train.eval_interval": 10**6, "train.log_interval": 1,
        "train.sample_interval": 0}))
    s = train(cfg, progress=False, log=lambda *a: None)
    assert 0 < s["step"] < 5000  # a step takes over 0.06 ms on any machine: 5000 outlast the budget
    assert s["train_seconds"] >= 60 * budget and s["val_log"][-1][0] == s["step"]
    ck = checkpoint.load(out / "ckpt.pt")
    assert ck["step"] == s["step"] and ck["train_seconds"] == s["train_seconds"]
    acc, scalars = read_scalars(out)
    assert scalars["lr"][-1][1] == pytest.approx(cfg.train.lr * cfg.train.min_lr_ratio, rel=0.05)

    # Resumed with its budget spent: no more training, the same step.
    again = train(cfg, resume=checkpoint.load(out / "ckpt.pt"), resume_dir=out, progress=False, log=lambda *a: None)
    assert again["step"] == s["step"] and again["train_seconds"] == s["train_seconds"]
    # Resumed with a larger budget: it trains on from the time already spent. (Twice what was spent,
    # not twice the budget: on a loaded machine one step can outlast the budget several times.)
    bigger = 2 * s["train_seconds"] / 60
    more = build_config(ck["config"], [f"train.max_minutes={bigger}"])
    longer = train(more, resume=checkpoint.load(out / "ckpt.pt"), resume_dir=out, progress=False,
                   log=lambda *a: None)
    assert longer["step"] > s["step"] and longer["train_seconds"] >= 60 * bigger


def test_checkpoint_from_before_the_time_budget_resumes(tmp_path, corpus_file):
    """Checkpoints written before train.max_minutes existed (no train_seconds, no such config key) resume."""
    out = tmp_path / "r"
    cfg = build_config({}, tiny_overrides(corpus_file, out, **{"train.max_steps": 10, "train.sample_interval": 0}))
    train(cfg, progress=False, log=lambda *a: None)
    ck = checkpoint.load(out / "ckpt.pt")
    del ck["train_seconds"], ck["config"]["train"]["max_minutes"]
    resumed_cfg = build_config(ck["config"], ["train.max_steps=20"])
    s = train(resumed_cfg, resume=ck, resume_dir=out, progress=False, log=lambda *a: None)
    assert s["step"] == 20 and 0 < s["train_seconds"]


def test_a_short_run_has_samples_and_a_tidy_run_directory(tmp_path, corpus_file):
    """A run shorter than train.sample_interval still shows a sample (at its last step); the
    projector's per-step folders live under projector/, the only folder in a run directory."""
    out = tmp_path / "run"
    cfg = build_config({}, tiny_overrides(corpus_file, out, **{"train.max_steps": 12, "train.sample_interval": 500}))
    train(cfg, progress=False, log=lambda *a: None)
    acc, _ = read_scalars(out)
    assert [e.step for e in acc.Tensors("samples/text_summary")] == [12]
    names = {p.name for p in out.iterdir()}
    assert {n for n in names if not n.startswith("events.out.tfevents.")} == {"config.yaml", "ckpt.pt", "best.pt",
                                                                            "projector"}
    projector = out / "projector"
    assert (projector / "projector_config.pbtxt").is_file()
    assert (projector / "00012" / "char_embedding" / "tensors.tsv").is_file()
