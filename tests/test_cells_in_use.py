"""Proves the LSTM and GRU work everywhere the tanh cell does: training (the carried state, the
LSTM's (h, c) among it, detached from window to window), checkpoints that record the cell,
sampling with --num-samples, beam search (which reorders states) and --score, bit-exact resume
on CPU with dropout, the 2-process DDP equivalence (the state gathered and re-split); and that
old checkpoints (no cell recorded) load as the tanh cell, and a resume may not change the cell.

Run: pytest tests/test_cells_in_use.py
"""
import pytest
import torch

from charrnn_torch.training import checkpoint
from charrnn_torch.cli import main
from charrnn_torch.training.config import build_config
from charrnn_torch.training.trainer import train
from conftest import run_script, tiny_overrides
from hooks import interrupted_and_resumed
from test_experiments import params_close, torchrun

CELLS = ["lstm", "gru"]


def cell_overrides(corpus, out, cell, **extra):
    return tiny_overrides(corpus, out, **{"model.cell": cell, "model.impl": "fused", "model.num_layers": 2,
                                          "model.dropout": 0.2, "train.sample_interval": 0, **extra})


@pytest.mark.parametrize("cell", CELLS)
def test_train_checkpoint_sample_beam_score(tmp_path, corpus_file, cell, capsys):
    out = tmp_path / "r"
    cfg = build_config({}, cell_overrides(corpus_file, out, cell, **{"train.max_steps": 40}))
    summary = train(cfg, progress=False, log=lambda *a: None)
    losses = [v for _, v in summary["train_log"]]
    assert losses[-1] < losses[0], losses
    ck = checkpoint.load(out / "ckpt.pt")
    assert ck["model_args"]["cell"] == cell and ck["config"]["model"]["cell"] == cell
    hidden = ck["hidden"]
    if cell == "lstm":
        assert isinstance(hidden, tuple) and [h.shape for h in hidden] == [(2, 4, 32)] * 2
    else:
        assert hidden.shape == (2, 4, 32)

    text = tmp_path / "t.txt"
    text.write_text(corpus_file.read_text()[:500])
    for args in (["--num-samples", "3", "--length", "20", "--seed", "1"],
                 ["--beam-width", "3", "--length", "20", "--prime", "the"],
                 ["--score", text]):
        assert main(["sample", "--checkpoint", str(out), *map(str, args)]) == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    assert captured.out.count("----- sample") == 3 and "log-probability" in captured.err
    assert "bits/char" in captured.out


@pytest.mark.slow
@pytest.mark.parametrize("cell", CELLS)
def test_resume_is_bit_exact(tmp_path, corpus_file, cell):
    # What a resume restores (weights, optimizer, RNG, data position, the carried state) is the same
    # whatever impl computes the step; test_gated_cells proves the impls give the same numbers.
    extra = {"train.max_steps": 24, "train.eval_interval": 8, "train.log_interval": 2, "model.impl": "fused"}
    whole = train(build_config({}, cell_overrides(corpus_file, tmp_path / "whole", cell, **extra)),
                  progress=False, log=lambda *a: None)
    part_cfg = build_config({}, cell_overrides(corpus_file, tmp_path / "part", cell, **extra))
    # at step 11: mid-interval, so the partial log state must carry over
    resumed = interrupted_and_resumed(part_cfg, 11, progress=False, log=lambda *a: None)
    a, b = (checkpoint.load(tmp_path / d / "ckpt.pt") for d in ("whole", "part"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [v for s, v in whole["train_log"] if s > 11] == [v for _, v in resumed["train_log"]]


def test_old_checkpoint_without_a_cell_is_the_tanh_cell(tmp_path, corpus_file, capsys):
    out = tmp_path / "r"
    train(build_config({}, tiny_overrides(corpus_file, out, **{"train.max_steps": 10, "train.sample_interval": 0})),
          progress=False, log=lambda *a: None)
    ck = checkpoint.load(out / "ckpt.pt")
    del ck["model_args"]["cell"], ck["config"]["model"]["cell"]  # as written before the gated cells
    checkpoint.save(ck, out / "ckpt.pt")
    (out / "best.pt").unlink()
    assert main(["sample", "--checkpoint", str(out), "--length", "10", "--seed", "1"]) == 0
    assert main(["train", "--resume", str(out), "train.max_steps=12", "--no-progress"]) == 0
    assert checkpoint.load(out / "ckpt.pt")["config"]["model"]["cell"] == "rnn"


def test_resume_may_not_change_the_cell(tmp_path, corpus_file, capsys):
    out = tmp_path / "r"
    train(build_config({}, cell_overrides(corpus_file, out, "lstm", **{"train.max_steps": 4})),
          progress=False, log=lambda *a: None)
    assert main(["train", "--resume", str(out), "model.cell=gru", "--no-progress"]) == 2
    assert "cannot change model.cell" in capsys.readouterr().err


@pytest.mark.slow
def test_ddp_two_processes_equal_single_process_lstm(tmp_path, corpus_file):
    ddp_args = {"train.dtype": "float64", "train.max_steps": 8, "train.eval_interval": 4, "train.batch_size": 4,
                "model.dropout": 0.0}
    single = run_script("train.py", "--config", "shakespeare.yaml", "--no-progress",
                        *cell_overrides(corpus_file, tmp_path / "single", "lstm", **ddp_args),
                        env={"OMP_NUM_THREADS": "1"})
    assert single.returncode == 0, single.stderr
    ddp = torchrun(2, ["--config", "shakespeare.yaml", *cell_overrides(corpus_file, tmp_path / "ddp", "lstm",
                                                                        **ddp_args)], hooks={"report_threads": True})
    # A clean exit, and the reason it is always clean: once the command has returned, no rank has a
    # gloo thread left to race the interpreter's exit (which aborted 1 run in 30, in teardown).
    assert ddp.returncode == 0, ddp.stdout[-2000:] + ddp.stderr[-3000:]
    assert ddp.stderr.count("gloo threads left: 0\n") == 2, ddp.stderr[-3000:]
    a, b = checkpoint.load(tmp_path / "single" / "ckpt.pt"), checkpoint.load(tmp_path / "ddp" / "ckpt.pt")
    assert b["world_size"] == 2 and params_close(a["model"], b["model"])
    for ha, hb in zip(a["hidden"], b["hidden"]):  # (h, c), each gathered from both ranks
        torch.testing.assert_close(ha, hb, rtol=1e-10, atol=1e-10)
    # the 2-rank run resumed in 1 process (the state re-split) continues as the single run does
    for run in ("ddp", "single"):
        r = run_script("train.py", "--no-progress", "--resume", tmp_path / run, "train.max_steps=12",
                       env={"OMP_NUM_THREADS": "1"})
        assert r.returncode == 0, r.stderr
    assert params_close(checkpoint.load(tmp_path / "ddp" / "ckpt.pt")["model"],
                        checkpoint.load(tmp_path / "single" / "ckpt.pt")["model"])
