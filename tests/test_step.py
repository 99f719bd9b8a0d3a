"""Proves the training step exists once (training/step.py): the bench's rows (tools/bench.py) run
the very step the trainer runs. From one seed, fed the windows a real training run read, the
bench's step and the trainer's leave bit-identical parameters after N steps (CPU, float64), for
every cell, eagerly and in the sync-free form a CUDA graph captures (run uncaptured on a CPU).
On CUDA (``-m gpu``, skipped without it) the same, with the sync-free step captured as a CUDA
graph on both sides, to 1e-12. Also: each bench row names the optimizer and settings its step ran,
and a non-finite loss leaves the parameters untouched and carries no state, in both forms.
"""
import math

import pytest
import torch

from charrnn_torch.model.cells import CELLS, CharRNN, build_model
from charrnn_torch.tools import bench
from charrnn_torch.training.config import build_config
from charrnn_torch.training.optim import make_optimizer
from charrnn_torch.training.step import Step
from charrnn_torch.training.trainer import Trainer
from conftest import tiny_overrides

STEPS = 6
CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                        reason="needs CUDA")])


class RecordingTrainer(Trainer):
    """The real trainer, keeping every window it trains on; sync_free runs graphs.py's sync-free
    step on a CPU, where there is no graph to capture."""

    sync_free = False

    def graph_mode(self, train_cfg):
        if self.sync_free and self.device.type == "cpu":
            return True, []
        return super().graph_mode(train_cfg)

    def train_step(self, x, y):
        self.windows = getattr(self, "windows", []) + [(x.clone(), y.clone())]
        return super().train_step(x, y)


class SyncFreeRecordingTrainer(RecordingTrainer):
    sync_free = True


def _config(corpus, out, cell, device="cpu", sync_free=False):
    return build_config({}, tiny_overrides(corpus, out, **{
        "device": device, "train.cuda_graphs": "on" if sync_free and device == "cuda" else "off",
        "model.cell": cell, "model.hidden_size": 7, "model.num_layers": 2, "train.dtype": "float64",
        "train.batch_size": 3, "train.seq_len": 5, "train.max_steps": STEPS, "train.eval_interval": STEPS,
        "train.sample_interval": 0, "train.lr_schedule": "constant", "train.optimizer": "adamw",
        "train.weight_decay": 0.1, "train.lr": 0.01, "train.grad_clip": 0.5}))


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("sync_free", [False, True], ids=["eager", "sync-free"])
@pytest.mark.parametrize("cell", CELLS)
def test_bench_step_equals_trainer_step(tmp_path, corpus_file, cell, sync_free, device):
    cfg = _config(corpus_file, tmp_path / "run", cell, device, sync_free)
    trainer = (SyncFreeRecordingTrainer if sync_free else RecordingTrainer)(cfg, progress=False, log=lambda *a: None)
    torch.manual_seed(cfg.train.seed)  # as the trainer seeded its own model
    model = build_model(cfg.model, len(trainer.corpus.vocab), torch.float64).to(device)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), trainer.model.parameters()))
    trainer.run()
    assert len(trainer.windows) == STEPS
    V, (B, T) = len(trainer.corpus.vocab), trainer.windows[0][0].shape
    step = bench.BenchStep(model, V, B, T, torch.device(device), cfg.train, graphed=sync_free)
    for x, y in trainer.windows:
        step.x.copy_(x)
        step.y.copy_(y)
        step()
    for (name, a), b in zip(trainer.model.named_parameters(), model.parameters()):
        if device == "cpu":
            assert torch.equal(a, b), name
        else:  # cuBLAS may pick other kernels for the same shapes in another graph
            assert float((a - b).abs().max() / a.abs().max()) <= 1e-12, name
    fresh = build_model(cfg.model, V, torch.float64).to(device)
    assert not all(torch.equal(a, b) for a, b in zip(trainer.model.parameters(), fresh.parameters()))


def test_bench_rows_name_their_step(monkeypatch):
    monkeypatch.setitem(bench.SHAPES, "tiny", (11, 7, 3, 5, 1))
    train_cfg = build_config({}, ["train.optimizer=adamw", "train.lr=0.003", "train.weight_decay=0.1"]).train
    rows, _ = bench.run_shape("tiny", torch.device("cpu"), repeats=1, memory=False, train_cfg=train_cfg)
    for r in rows:
        want = bench.NUMPY_SETTINGS if r.impl == bench.NUMPY else "adamw lr 0.003 wd 0.1 clip 5"
        assert r.optimizer == want, r
    assert all(line.endswith(r.optimizer) for line, r in zip(bench.format_table(rows).splitlines()[2:], rows))


@pytest.mark.parametrize("sync_free", [False, True], ids=["eager", "sync-free"])
def test_a_non_finite_step_changes_nothing(sync_free):
    torch.manual_seed(0)
    model = CharRNN(11, 7, 2, impl="fused", cell="gru").double()
    train_cfg = build_config({}, ["train.optimizer=adam"]).train
    opt = make_optimizer(list(model.parameters()), train_cfg, capturable=sync_free)
    step = Step(model, opt, model.parameters(), train_cfg.grad_clip)
    x = torch.randint(11, (3, 5))
    poisoned = torch.full((2, 3, 7), math.nan, dtype=torch.float64)
    before = [p.detach().clone() for p in model.parameters()]
    if sync_free:
        found_inf = torch.zeros(())
        opt.found_inf = found_inf
        opt.zero_grad(set_to_none=True)
        loss, _, state, finite = step.sync_free(x, x, poisoned, found_inf)
        assert not bool(finite) and float(found_inf) == 1 and float(state.abs().sum()) == 0
    else:
        outcome = step(x, x, poisoned)
        assert not outcome.finite and outcome.state is None and not torch.isfinite(outcome.loss)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert not opt.state or all(float(s["step"]) == 0 for s in opt.state.values())
