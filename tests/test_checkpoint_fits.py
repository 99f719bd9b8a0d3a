"""Proves the one check when a checkpoint is opened (checkpoint.check_fits, in checkpoint.load):
a checkpoint whose parts do not fit together (tensors of other shapes than its model_args give,
a config describing another architecture than its weights, a vocabulary shorter or longer than
the model's output, a character listed twice, NaN or Inf weights) is refused by every command
that reads one (sample, sample --score, export, visualize, train --resume, train --init-from) with
one `error:` line naming what does not fit, exit 2, before anything is written: the run directory
and every other file stay byte for byte as they were.

And a run's corpus that gained characters since the run is refused, naming them, where a command
needs that corpus again (sample --score --dynamic, visualize's validation split), writing no cache.
"""
import pytest
import torch

from charrnn_torch.cli import main
from charrnn_torch.training import checkpoint
from charrnn_torch.training.config import build_config
from charrnn_torch.training.trainer import train
from conftest import tiny_overrides

H = 7


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished run (a 2-layer GRU, H = 7) and the raw dict of its checkpoint."""
    tmp = tmp_path_factory.mktemp("fits")
    corpus = tmp / "corpus.txt"
    corpus.write_text("bad cafe, a faced bed; deed\n" * 30)
    cfg = build_config({}, tiny_overrides(corpus, tmp / "run", **{
        "model.hidden_size": H, "model.num_layers": 2, "model.cell": "gru", "train.max_steps": 4,
        "train.eval_interval": 4, "train.sample_interval": 0}))
    train(cfg, progress=False, log=lambda *a: None)
    return tmp / "run", torch.load(tmp / "run" / "ckpt.pt", weights_only=True)


def _config_says(ck):
    ck["config"]["model"]["hidden_size"] = 2 * H


def _wrong_shape(ck):
    ck["model"]["cells.1.W_hh"] = torch.zeros(3 * H, H + 1)


def _short_vocab(ck):
    ck["vocab"] = ck["vocab"][:-1]


def _twice(ck):
    ck["vocab"] = ck["vocab"][:-1] + ck["vocab"][:1]


def _nan(ck):
    ck["model"]["W_hy"][2, 3] = float("nan")


def _inf(ck):
    ck["model"]["cells.0.b_h"][0] = float("inf")


MISFITS = {  # name -> (how the checkpoint is spoiled, what the error says)
    "config describes another model": (_config_says, f"its config has model.hidden_size={2 * H}, but its weights "
                                                     f"are for hidden_size {H}"),
    "a tensor of another shape": (_wrong_shape, f"its tensor cells.1.W_hh is ({3 * H}, {H + 1}), but the model its "
                                                f"model_args describe (gru 2x{H}, vocabulary of"),
    "a vocabulary shorter than the output": (_short_vocab, "characters, but its model predicts"),
    "a character listed twice": (_twice, "its vocabulary lists a character twice"),
    "NaN weights": (_nan, "its weights hold NaN or Inf (W_hy); use another checkpoint of the run"),
    "Inf weights": (_inf, "its weights hold NaN or Inf (cells.0.b_h)"),
}


def _commands(bad, tmp):
    (tmp / "text.txt").write_text("a bad cafe\n" * 5)
    return {
        "sample": ["sample", "--checkpoint", str(bad), "--length", "10"],
        "sample --score": ["sample", "--checkpoint", str(bad), "--score", str(tmp / "text.txt")],
        "export": ["export", "--checkpoint", str(bad), "--format", "html", "--out", str(tmp / "p.html")],
        "visualize": ["visualize", "--checkpoint", str(bad), "--text", str(tmp / "text.txt"), "--out", str(tmp / "v")],
        "train --resume": ["train", "--resume", str(bad), "train.max_steps=8", "--no-progress"],
        "train --init-from": ["train", "--init-from", str(bad / "ckpt.pt"), "--config", str(bad / "config.yaml"),
                              f"out_dir={tmp / 'tuned'}", "--no-progress"],
    }


def snapshot(d):
    return {p.relative_to(d): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("misfit", MISFITS)
@pytest.mark.parametrize("command", ["sample", "sample --score", "export", "visualize", "train --resume",
                                     "train --init-from"])
def test_a_checkpoint_that_does_not_fit_is_refused_before_anything_is_written(trained, tmp_path, misfit, command,
                                                                              capsys):
    run, raw = trained
    spoil, says = MISFITS[misfit]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.yaml").write_bytes((run / "config.yaml").read_bytes())
    ck = {**raw, "model": dict(raw["model"]), "config": {**raw["config"], "model": dict(raw["config"]["model"])}}
    ck["model"] = {k: v.clone() for k, v in ck["model"].items()}
    spoil(ck)
    checkpoint.save(ck, bad / "ckpt.pt")
    argv = _commands(bad, tmp_path)[command]
    before = snapshot(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: checkpoint {bad / 'ckpt.pt'} does not fit together: ") and says in err, err
    assert err.count("\n") == 1
    assert snapshot(tmp_path) == before


def test_a_checkpoint_that_fits_still_loads(trained):
    run, _ = trained
    model, vocab, ck = checkpoint.load_model(run)
    assert model.hidden_size == H and len(vocab) == model.vocab_size == len(ck["vocab"])


@pytest.mark.parametrize("command", ["dynamic", "from-val"])
def test_a_corpus_that_gained_characters_is_refused_naming_them(trained, tmp_path, command, capsys):
    run, raw = trained
    grown = tmp_path / "grown.txt"
    grown.write_text(open(raw["config"]["data"]["path"]).read() + "QZ\n")
    ck = {**raw, "config": {**raw["config"], "data": {**raw["config"]["data"], "path": str(grown)}}}
    checkpoint.save(ck, tmp_path / "ckpt.pt")
    (tmp_path / "text.txt").write_text("a bad cafe\n" * 5)
    argv = {"dynamic": ["sample", "--checkpoint", str(tmp_path / "ckpt.pt"), "--score", str(tmp_path / "text.txt"),
                        "--dynamic"],
            "from-val": ["visualize", "--checkpoint", str(tmp_path / "ckpt.pt"), "--out", str(tmp_path / "v")]}[command]
    before = snapshot(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {grown} (the run's data.path) has changed since the run: 2 of its characters are "
                          f"not in the model's vocabulary ('Q', 'Z'); it is needed to ") and err.count("\n") == 1, err
    assert snapshot(tmp_path) == before  # no cache of the grown corpus either
