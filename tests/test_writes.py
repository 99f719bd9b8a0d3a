"""Proves that every command writes its files atomically and reports a failed write in one line,
and that no output replaces what the command reads:

- into a folder that cannot be written (or where `index.html` is a directory), `visualize`,
  `sample --out`, `export`, `sweep` and `plot` (in test_plots.py) end with one `error: could not
  write <path> (<reason>)` line, exit 1, no traceback and no temporary file left;
- `sample --out` streams into a temporary file: a sample stopped half way leaves the old file
  byte for byte as it was;
- an `--out` that is the checkpoint read, a link to it, or another checkpoint of its run (and for
  `sample` its `--prime-file`, for `visualize` its `--text`) is refused with one `error:` line, exit
  2, before anything is read or written: every file stays as it was.

That no module but files.py opens a file for writing is test_layout.py's.
"""
import os

import pytest

from charrnn_torch.cli import main
from charrnn_torch.sampling import sample
from conftest import tiny_overrides
from test_export import save_model


@pytest.fixture
def run(tmp_path):
    """A run directory as training leaves one: best.pt, ckpt.pt and a step checkpoint."""
    d = tmp_path / "run"
    d.mkdir()
    save_model(d / "best.pt", "gru", 1)
    for name in ("ckpt.pt", "ckpt-5.pt"):
        (d / name).write_bytes((d / "best.pt").read_bytes())
    (d / "text.txt").write_text("bad cafe\nabide\n" * 20)
    return d


def contents(d):
    return {p.relative_to(d): (p.read_bytes() if p.is_file() else None) for p in sorted(d.rglob("*"))}


def one_error_line(capsys, code, got):
    err = capsys.readouterr().err
    assert got == code and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def _commands(run, out):
    ckpt = str(run / "best.pt")
    return {
        "visualize": ["visualize", "--checkpoint", ckpt, "--text", str(run / "text.txt"), "--out", str(out / "viz")],
        "sample --out": ["sample", "--checkpoint", ckpt, "--length", "20", "--out", str(out / "s.txt")],
        "export": ["export", "--checkpoint", ckpt, "--format", "html", "--out", str(out / "p.html")],
    }


@pytest.mark.parametrize("command", ["visualize", "sample --out", "export"])
def test_a_folder_that_cannot_be_written_is_one_line(run, unwritable_dir, command, capsys):
    locked, reason = unwritable_dir
    err = one_error_line(capsys, 1, main(_commands(run, locked)[command]))
    assert err.startswith(f"error: could not write {locked}/") and err.endswith(f" ({reason})\n"), err
    assert not os.listdir(locked)


def test_sweep_into_a_folder_that_cannot_be_written(tmp_path, unwritable_dir, capsys):
    locked, reason = unwritable_dir
    config = tmp_path / "c.yaml"
    config.write_text("".join(f"{o.replace('=', ': ', 1)}\n" for o in tiny_overrides("x.txt", "o")
                              if "." not in o.split("=")[0]))
    code = main(["sweep", "--config", str(config), "--grid", "train.lr=1e-3,2e-3", "--sweep-dir", str(locked / "s")])
    assert one_error_line(capsys, 1, code) == f"error: could not write {locked / 's'} ({reason})\n"


def test_index_html_a_directory_is_one_line(run, tmp_path, capsys):
    (tmp_path / "viz" / "index.html").mkdir(parents=True)
    err = one_error_line(capsys, 1, main(_commands(run, tmp_path)["visualize"]))
    assert err == f"error: could not write {tmp_path / 'viz' / 'index.html'} (Is a directory)\n"
    assert [p.name for p in (tmp_path / "viz").iterdir()] == ["index.html"]  # no temporary left


def test_a_sample_stopped_half_way_keeps_the_old_out(run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "s.txt"
    out.write_text("the previous sample\n")
    real = sample.generate

    def stopped(*args, on_text=None, **kwargs):  # Ctrl-C after 5 characters were written
        written = []

        def text(t):
            on_text(t)
            written.append(t)
            if len(written) == 5:
                raise KeyboardInterrupt
        return real(*args, on_text=text, **kwargs)
    monkeypatch.setattr(sample, "generate", stopped)
    assert main(_commands(run, tmp_path)["sample --out"]) == 130
    assert out.read_text() == "the previous sample\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "s.txt"]


def _inputs(run, tmp_path):
    """name -> (argv, the path the error names): outputs that would replace an input."""
    (tmp_path / "link.pt").symlink_to(run / "best.pt")
    (tmp_path / "prime.txt").write_text("bad")
    ckpt, text = str(run / "best.pt"), str(run / "text.txt")
    html = ["export", "--checkpoint", ckpt, "--format", "html", "--out"]
    return {
        "export onto its checkpoint": (html + [ckpt], "the checkpoint this command reads"),
        "export onto a link to it": (html + [str(tmp_path / "link.pt")], "the checkpoint this command reads"),
        "export onto the run's ckpt.pt": (html + [str(run / "ckpt.pt")], f"a checkpoint of the run in {run}"),
        "export onto a step checkpoint": (html + [str(run / "ckpt-5.pt")], f"a checkpoint of the run in {run}"),
        "export of a run dir onto its best": (["export", "--checkpoint", str(run), "--format", "pt2", "--out", ckpt],
                                              "the checkpoint this command reads"),
        "sample onto its checkpoint": (["sample", "--checkpoint", ckpt, "--out", ckpt],
                                       "the checkpoint this command reads"),
        "sample onto its prime file": (["sample", "--checkpoint", ckpt, "--prime-file", str(tmp_path / "prime.txt"),
                                        "--out", str(tmp_path / "prime.txt")], "the --prime-file it reads"),
        "visualize into the run, over its text": (["visualize", "--checkpoint", ckpt, "--text", str(run / "insight.json"),
                                                   "--out", str(run)], "the --text it reads"),
    }


@pytest.mark.parametrize("case", ["export onto its checkpoint", "export onto a link to it", "export onto the run's ckpt.pt",
                                  "export onto a step checkpoint", "export of a run dir onto its best",
                                  "sample onto its checkpoint", "sample onto its prime file",
                                  "visualize into the run, over its text"])
def test_an_out_that_is_an_input_is_refused(run, tmp_path, case, capsys):
    (run / "insight.json").write_text("the text to look at, not an output\n")
    argv, what = _inputs(run, tmp_path)[case]
    before = contents(tmp_path)
    err = one_error_line(capsys, 2, main(argv))
    assert f" is {what}: writing there would replace it; choose another file\n" in err, err
    assert err.startswith(f"error: --out {argv[argv.index('--out') + 1]}"), err
    assert contents(tmp_path) == before
