"""Proves `charrnn plot` draws what the runs logged: the curve it reads is each run's loss/val
at increasing minutes of training (a resumed run's pause between stop and resume is not training:
its curve goes on from its stored training time, not the wall clock), the PNG it writes is a real,
non-blank image, and the format follows --out's extension (png, svg, pdf; any other is refused, so
no --out can be one of a run's own files); that it draws what can be drawn and says in one line
what it skipped (a run not yet evaluated, summary.csv), taking a sweep's folder as its runs; and
that nothing to draw, a path that does not exist, a mismatched --labels or an --out that is a
directory get one `error:` line and exit 2, and a folder that cannot be written one
`error: could not write` line and exit 1.

Run: pytest tests/test_plots.py
"""
import time

import pytest

from charrnn_torch.training import checkpoint
from charrnn_torch.cli import main
from charrnn_torch.training.config import build_config
from charrnn_torch.tools.plots import val_curve
from charrnn_torch.training.trainer import train
from conftest import tiny_overrides

matplotlib = pytest.importorskip("matplotlib")  # the [plot] extra; `pip install -e ".[dev]"` has it


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plots")
    corpus = tmp / "corpus.txt"
    corpus.write_text("ROMEO: but soft, what light through yonder window breaks?\n" * 40)
    runs = []
    for cell in ("rnn", "gru"):
        cfg = build_config({}, tiny_overrides(corpus, tmp / cell, **{
            "model.cell": cell, "train.max_steps": 20, "train.eval_interval": 5, "train.sample_interval": 0}))
        runs.append((tmp / cell, train(cfg, progress=False, log=lambda *a: None)))
    return tmp, runs


def test_curve_is_what_the_run_logged(two_runs):
    _, runs = two_runs
    for run_dir, summary in runs:
        curve = val_curve(run_dir)
        assert [v for _, v in curve] == pytest.approx([v for _, v in summary["val_log"]], rel=1e-6)
        minutes = [m for m, _ in curve]
        assert minutes == sorted(minutes) and 0 <= minutes[0] and minutes[-1] < 5


def test_a_resumed_run_is_drawn_at_its_training_minutes(tmp_path, monkeypatch):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("ROMEO: but soft, what light through yonder window breaks?\n" * 40)
    extra = {"train.max_steps": 10, "train.eval_interval": 5, "train.sample_interval": 0}
    first = train(build_config({}, tiny_overrides(corpus, tmp_path / "r", **extra)), progress=False,
                  log=lambda *a: None)
    # Resumed two hours later: every wall-clock stamp from here on (TensorBoard's included) is shifted.
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 7200)
    ck = checkpoint.load(tmp_path / "r" / "ckpt.pt")
    resumed = train(build_config(ck["config"], ["train.max_steps=20"]), resume=ck, resume_dir=tmp_path / "r",
                    progress=False, log=lambda *a: None)
    monkeypatch.undo()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tmp_path / "r"))
    acc.Reload()
    stamps = [e.wall_time for e in acc.Scalars("loss/val")]
    assert stamps[-1] - stamps[0] > 7000  # the pause is in the events: a wall-clock curve would span it
    curve = val_curve(tmp_path / "r")
    assert [s for s, _ in first["val_log"] + resumed["val_log"]] == [5, 10, 15, 20]
    assert [v for _, v in curve] == pytest.approx([v for _, v in first["val_log"] + resumed["val_log"]], rel=1e-6)
    minutes = [m for m, _ in curve]
    assert minutes == sorted(minutes) and minutes[-1] == pytest.approx(resumed["train_seconds"] / 60, rel=1e-6)
    assert minutes[-1] < 5  # seconds of training, not the two hours between stop and resume


def test_png_is_a_real_non_blank_image(two_runs, capsys):
    tmp, runs = two_runs
    out = tmp / "cells.png"
    assert main(["plot", *[str(r) for r, _ in runs], "--out", str(out), "--labels", "tanh,GRU"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import numpy as np
    from matplotlib.image import imread
    pixels = imread(out).reshape(-1, 4)
    assert len(np.unique(pixels, axis=0)) > 20  # lines, text and axes, not a blank canvas


def test_bad_input(two_runs, capsys):
    tmp, runs = two_runs
    empty = tmp / "empty"
    empty.mkdir(exist_ok=True)
    for argv, needle in (([str(empty)], f"nothing to draw; skipped {empty} (no TensorBoard events)"),
                         ([str(tmp / "typo")], "no such file or directory"),
                         ([str(runs[0][0]), "--labels", "a,b"], "--labels has 2 names for 1 runs"),
                         ([str(runs[0][0]), "--out", str(tmp)], "is a directory")):
        assert main(["plot", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and needle in err and err.count("\n") == 1


@pytest.mark.parametrize("ext,magic", [("png", b"\x89PNG"), ("svg", b"<?xml"), ("pdf", b"%PDF"), ("SVG", b"<?xml")])
def test_the_format_follows_the_extension(two_runs, ext, magic, capsys):
    tmp, runs = two_runs
    out = tmp / f"curves.{ext}"
    assert main(["plot", str(runs[0][0]), "--out", str(out)]) == 0
    assert out.read_bytes().startswith(magic)


@pytest.mark.parametrize("name", ["curves.jpg", "curves", "curves.png.txt"])
def test_another_extension_is_refused_before_anything_is_read(two_runs, name, capsys):
    tmp, runs = two_runs
    assert main(["plot", str(runs[0][0]), "--out", str(tmp / name)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out {tmp / name}: the format follows the extension, and it must be .png, "
                          f".svg or .pdf") and err.count("\n") == 1, err
    assert not (tmp / name).exists()


def test_a_folder_that_cannot_be_written(two_runs, unwritable_dir, capsys):
    _, runs = two_runs
    locked, reason = unwritable_dir
    assert main(["plot", str(runs[0][0]), "--out", str(locked / "p.png")]) == 1
    assert capsys.readouterr().err == f"error: could not write {locked / 'p.png'} ({reason})\n"


def test_draws_what_it_can_and_says_what_it_skipped(two_runs, tmp_path, capsys):
    """A folder of runs (a sweep's, with its summary.csv) and a run with no loss/val yet."""
    import shutil
    tmp, runs = two_runs
    sweep = tmp_path / "sweep"
    for run_dir, _ in runs:
        shutil.copytree(run_dir, sweep / run_dir.name)
    (sweep / "summary.csv").write_text("run,best_val\n")
    (sweep / "sweep.yaml").write_text("grid: []\n")
    fresh = sweep / "zz_started"  # its events hold no loss/val: it has not been evaluated yet
    from torch.utils.tensorboard import SummaryWriter
    with SummaryWriter(str(fresh)) as w:
        w.add_scalar("loss/train", 3.0, 1)
    out = tmp_path / "all.png"
    assert main(["plot", str(sweep), "--out", str(out)]) == 0
    said = capsys.readouterr().out.strip()
    assert said == f"wrote {out}: 2 runs; skipped {fresh} (no loss/val yet)" and out.is_file()
    # what a shell's sweep/* hands over: the runs, and the files beside them
    assert main(["plot", *sorted(str(p) for p in sweep.iterdir()), "--out", str(out)]) == 0
    said = capsys.readouterr().out.strip()
    assert said == (f"wrote {out}: 2 runs; skipped {sweep / 'summary.csv'} (not a run directory), "
                    f"{sweep / 'sweep.yaml'} (not a run directory), {fresh} (no loss/val yet)")


def test_help_names_the_default_output(capsys):
    from charrnn_torch import cli
    with pytest.raises(SystemExit):
        cli.parse("plot", ["--help"])
    assert f"(default: {cli.PLOT_OUT}, in the current folder)" in " ".join(capsys.readouterr().out.split())
