"""Proves the whole-step CUDA graph (train.cuda_graphs, graphs.py) trains as the eager loop does.

On any machine: the graph's step with no host sync, run uncaptured on the CPU (graphs.py's
``capture=False``), against the eager loop, in float64, for each cell: the same losses, parameters,
books (smoothed loss, non-finite count) and learning rate at every step, with a planted non-finite
step skipped by both; a resumed run equals an uninterrupted one; the warm-up leaves no trace;
``on`` without CUDA is refused with one error line, ``auto`` falls back and says so once.

On CUDA (skipped without it; ``pytest -m gpu``): the captured graph replayed against eager steps in
float32 with TF32 off (<= 1e-5), the planted non-finite step, a resumed graphed run, and the
learning-rate schedule followed step by step (a baked-in rate would fail it), for each cell.
"""
import math

import pytest
import torch

from charrnn_torch.training import checkpoint, graphs
from charrnn_torch.cli import main
from charrnn_torch.training.config import build_config
from charrnn_torch.model.cells import CELLS, CharRNN, map_state
from charrnn_torch.training.optim import lr_factor
from charrnn_torch.training.step import Step
from charrnn_torch.training.trainer import Trainer
from conftest import read_scalars, rel_err, tiny_overrides

POISONED = 7  # the step whose carried state is made NaN: its loss is non-finite, and it must be skipped


class PlantedTrainer(Trainer):
    """The real trainer, with the carried state poisoned before step POISONED, and graph mode allowed
    on a CPU (where graphs.py runs the same sync-free step uncaptured)."""

    sync_free_on_cpu = False

    def graph_mode(self, train_cfg):
        if self.sync_free_on_cpu and train_cfg.cuda_graphs == "on" and self.device.type == "cpu":
            return True, []
        return super().graph_mode(train_cfg)

    def train_step(self, x, y):
        if self.state.step + 1 == POISONED and self.state.hidden is not None:
            map_state(lambda h: h.fill_(math.nan), self.state.hidden)
        return super().train_step(x, y)


class SyncFreeTrainer(PlantedTrainer):
    sync_free_on_cpu = True


def _cfg(corpus, out, cell, graphed, device="cpu", dtype="float64", **extra):
    return build_config({}, tiny_overrides(corpus, out, **{
        "device": device, "model.cell": cell, "model.num_layers": 2, "train.dtype": dtype,
        "train.max_steps": 16, "train.log_interval": 1, "train.eval_interval": 8, "train.sample_interval": 0,
        "train.warmup_steps": 4, "train.lr": 0.02, "train.cuda_graphs": "on" if graphed else "off",
        "train.optimizer": "adamw", "train.weight_decay": 0.1, **extra}))


def _run(trainer_cls, cfg, **kwargs):
    summary = trainer_cls(cfg, progress=False, log=lambda *a: None, **kwargs).run()
    return summary, checkpoint.load(cfg.out_dir + "/ckpt.pt")


def _same_run(a, b, tol):
    (sa, ca), (sb, cb) = a, b
    assert [s for s, _ in sa["train_log"]] == [s for s, _ in sb["train_log"]]
    assert POISONED not in [s for s, _ in sa["train_log"]]  # the poisoned step was skipped, not logged
    assert rel_err([v for _, v in sa["train_log"]], [v for _, v in sb["train_log"]]) <= tol
    assert rel_err([v for _, v in sa["val_log"]], [v for _, v in sb["val_log"]]) <= tol
    for name, p in ca["model"].items():
        assert rel_err(p.numpy(), cb["model"][name].numpy()) <= tol, name
    assert sa["nonfinite_steps"] == sb["nonfinite_steps"] == 1
    assert abs(float(ca["smooth_loss"]) - float(cb["smooth_loss"])) <= tol * float(ca["smooth_loss"])
    assert ca["log_acc"]["n"] == cb["log_acc"]["n"]


@pytest.mark.parametrize("cell", CELLS)
def test_sync_free_step_trains_as_the_eager_loop(tmp_path, corpus_file, cell):
    eager = _run(PlantedTrainer, _cfg(corpus_file, str(tmp_path / "eager"), cell, graphed=False))
    sync_free = _run(SyncFreeTrainer, _cfg(corpus_file, str(tmp_path / "graph"), cell, graphed=True))
    _same_run(eager, sync_free, 1e-12)


def test_sync_free_run_follows_the_schedule_step_by_step(tmp_path, corpus_file):
    cfg = _cfg(corpus_file, str(tmp_path / "graph"), "gru", graphed=True)
    _run(SyncFreeTrainer, cfg)
    _, scalars = read_scalars(tmp_path / "graph")
    # The rate logged after step s is the one the scheduler set for step s (0-based), held in the
    # optimizer's tensor that the graph reads.
    want = [cfg.train.lr * lr_factor(s, cfg.train) for s, _ in scalars["lr"]]
    assert rel_err([v for _, v in scalars["lr"]], want) <= 1e-6
    assert len({round(v, 12) for _, v in scalars["lr"]}) > 8  # it moved: warm-up, then the cosine


def test_sync_free_resume_equals_an_uninterrupted_run(tmp_path, corpus_file):
    # A constant rate after the warm-up: a cosine would depend on max_steps, which the split run changes.
    const = {"train.lr_schedule": "constant"}
    whole = _run(SyncFreeTrainer, _cfg(corpus_file, str(tmp_path / "whole"), "lstm", graphed=True, **const))
    first = _cfg(corpus_file, str(tmp_path / "split"), "lstm", graphed=True, **{"train.max_steps": 8}, **const)
    _run(SyncFreeTrainer, first)
    resumed_cfg = build_config(checkpoint.load(tmp_path / "split" / "ckpt.pt")["config"], ["train.max_steps=16"])
    resumed = _run(SyncFreeTrainer, resumed_cfg, resume=checkpoint.load(tmp_path / "split" / "ckpt.pt"),
                   resume_dir=tmp_path / "split")
    for name, p in whole[1]["model"].items():
        assert torch.equal(p, resumed[1]["model"][name]), name


def test_restore_puts_back_what_warm_up_changed():
    # Warm-up runs real steps; the first training step must start from the untouched model, a
    # fresh optimizer and empty books, as the eager loop's does.
    torch.manual_seed(0)
    model = CharRNN(11, 7, 2, impl="fused", cell="lstm").double()
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=torch.tensor(0.01, dtype=torch.float64), fused=True, capturable=True)
    g = graphs.WholeStepGraph(model, Step(model, opt, params, 5.0), (3, 5), 2.0, capture=False)
    before = [b.detach().clone() for b in g.buffers()]
    saved = g.snapshot()
    x = torch.randint(11, (3, 5))
    for _ in range(3):
        g.step(x, x, g.state)
    assert any(not torch.equal(a, b) for a, b in zip(before, g.buffers()))
    assert opt.state and all(float(s["step"]) == 3 for s in opt.state.values())
    g.restore(saved)
    assert all(torch.equal(a, b) for a, b in zip(before, g.buffers()))
    assert all(float(v.abs().sum()) == 0 for s in opt.state.values() for v in s.values())


def test_on_without_cuda_is_refused_and_auto_falls_back(tmp_path, corpus_file, capsys):
    args = ["train", "--no-progress", *tiny_overrides(corpus_file, tmp_path / "on", **{
        "device": "cpu", "train.max_steps": 2, "train.cuda_graphs": "on"})]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: train.cuda_graphs=on: CUDA graphs need a CUDA device") and err.count("\n") == 1
    assert not (tmp_path / "on").exists()
    args = ["train", "--no-progress", *tiny_overrides(corpus_file, tmp_path / "auto", **{
        "device": "cpu", "train.max_steps": 2, "train.cuda_graphs": "auto"})]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("train.cuda_graphs=auto: eager training steps, since CUDA graphs need a CUDA device") == 1


def test_refusal_names_what_cannot_be_captured():
    cuda0 = torch.device("cuda", 0)
    for name in graphs.GRAPH_OPTIMIZERS:
        assert graphs.refusal(name, cuda0, 1) is None
    assert "cannot skip a non-finite step" in graphs.refusal("sgd", cuda0, 1)
    assert "DDP" in graphs.refusal("adam", cuda0, 2)
    assert "need a CUDA device" in graphs.refusal("adam", torch.device("cpu"), 1)


# ---------------------------------------------------------------- on a GPU

@pytest.fixture
def no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.usefixtures("no_tf32")
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graphed_steps_equal_eager_steps_on_cuda(tmp_path, corpus_file, cell):
    over = {"train.tf32": False}
    eager = _run(PlantedTrainer, _cfg(corpus_file, str(tmp_path / "e"), cell, False, "cuda", "float32", **over))
    graphed = _run(PlantedTrainer, _cfg(corpus_file, str(tmp_path / "g"), cell, True, "cuda", "float32", **over))
    _same_run(eager, graphed, 1e-5)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graphed_resume_is_exact_on_cuda(tmp_path, corpus_file, cell):
    # float64, so that the order of the atomic adds in index_select's backward cannot show.
    const = {"train.lr_schedule": "constant"}  # a cosine would depend on max_steps, which the split run changes
    whole = _run(PlantedTrainer, _cfg(corpus_file, str(tmp_path / "whole"), cell, True, "cuda", **const))
    _run(PlantedTrainer, _cfg(corpus_file, str(tmp_path / "split"), cell, True, "cuda", **{"train.max_steps": 8},
                              **const))
    ck = checkpoint.load(tmp_path / "split" / "ckpt.pt")
    resumed = _run(PlantedTrainer, build_config(ck["config"], ["train.max_steps=16"]), resume=ck,
                   resume_dir=tmp_path / "split")
    for name, p in whole[1]["model"].items():
        assert rel_err(p.numpy(), resumed[1]["model"][name].numpy()) <= 1e-12, name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graphed_run_follows_the_schedule_on_cuda(tmp_path, corpus_file):
    cfg = _cfg(corpus_file, str(tmp_path / "g"), "rnn", True, "cuda")
    _run(PlantedTrainer, cfg)
    _, scalars = read_scalars(tmp_path / "g")
    want = [cfg.train.lr * lr_factor(s, cfg.train) for s, _ in scalars["lr"]]
    assert rel_err([v for _, v in scalars["lr"]], want) <= 1e-6
