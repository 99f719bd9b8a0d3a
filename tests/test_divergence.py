"""Proves what happens when a run's weights stop being numbers: an update that makes them NaN or
Inf (train.weight_decay=1e30) counts as a non-finite step and ends the run at once with one
`error:` line, exit 1, naming the last good checkpoint, which is left as it was and still loads;
and that nothing the logger is given (NaN and Inf losses, rates, weights, gradients, images,
embeddings) turns into a traceback: TensorBoard is simply not asked to bin what it cannot.
"""
import math

import torch

from charrnn_torch.cli import main
from charrnn_torch.model.cells import CharRNN
from charrnn_torch.training import checkpoint
from charrnn_torch.training.config import build_config, dump_yaml, flatten, to_dict
from charrnn_torch.training.logger import RunLogger
from conftest import read_scalars, tiny_overrides

# AdamW scales every weight by 1 - lr * weight_decay = -1e28 (lr 0.01) per update: still finite after the first
# update of a run, past float32's 3.4e38 after the second.
EXPLODES = ["train.optimizer=adamw", "train.weight_decay=1e30"]


def test_weights_made_non_finite_stop_the_run_in_one_line(tmp_path, corpus_file, capsys):
    out = tmp_path / "r"
    args = tiny_overrides(corpus_file, out, **{"train.max_steps": 30, "train.sample_interval": 0})
    assert main(["train", "--no-progress", *args, *EXPLODES]) == 1
    err = capsys.readouterr().err
    assert err == (f"error: the update of step 2 made the weights non-finite (NaN or Inf), so every later step "
                   f"would be too; try a lower train.lr or train.weight_decay; no checkpoint is left in {out}\n")
    assert not (out / "ckpt.pt").exists()
    assert read_scalars(out)[1]["train/nonfinite_steps"] == [(2, 1.0)]


def test_the_last_good_checkpoint_is_kept_and_loads(tmp_path, corpus_file, capsys):
    out = tmp_path / "r"
    args = tiny_overrides(corpus_file, out, **{"train.max_steps": 10, "train.sample_interval": 0})
    assert main(["train", "--no-progress", *args]) == 0
    before = (out / "ckpt.pt").read_bytes()
    capsys.readouterr()
    assert main(["train", "--no-progress", "--resume", str(out), "train.max_steps=20", *EXPLODES]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the update of step 12 made the weights non-finite") and err.count("\n") == 1
    assert err.endswith(f"; the last good checkpoint is {out / 'ckpt.pt'}\n"), err
    assert (out / "ckpt.pt").read_bytes() == before
    checkpoint.load_model(out)  # and it passes the checks of a checkpoint: finite weights


def test_the_logger_takes_any_value_without_a_traceback(tmp_path):
    cfg = build_config({}, tiny_overrides("x.txt", tmp_path))
    log = RunLogger(tmp_path, dump_yaml(cfg), cfg.train, 0, False, False, lambda *a: None)
    model = CharRNN(11, 7)
    with torch.no_grad():
        model.cells[0].W_hh.mul_(3e38)  # finite, but binned in float32 its range would overflow
        model.W_hy.fill_(math.inf)
        model.b_y[0] = math.nan
    for p in model.parameters():
        p.grad = torch.full_like(p, math.nan)
    nan, inf = math.nan, math.inf
    log.train_scalars(1, nan, inf, nan, inf, nan, nan)
    log.nonfinite(1, 1)
    log.validation(1, nan, inf, model, nan)
    log.validation_line(1, nan, inf, inf, False)
    log.dynamic(1, nan, inf, nan)
    log.hidden_heatmap(1, torch.zeros(3, 7, 5, dtype=torch.uint8).numpy())
    log.char_embedding(1, torch.full((11, 7), nan), [str(i) for i in range(11)])
    log.sample("", 1)
    log.hparams(flatten(to_dict(cfg)), nan, nan)
    log.close()
    acc, scalars = read_scalars(tmp_path)
    assert [s for s, _ in scalars["loss/val"]] == [1] and math.isnan(scalars["loss/val"][0][1])
    histograms = set(acc.Tags()["histograms"])
    assert "params/cells.0.W_hh" in histograms  # huge but finite: drawn
    assert not {"params/W_hy", "params/b_y"} & histograms and not any(t.startswith("grads/") for t in histograms)
