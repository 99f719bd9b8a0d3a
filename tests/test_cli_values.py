"""Proves that every flag of train.py, sample.py, sweep.py, bench.py and serve.py, and every kind of bad
config value (non-finite, beyond int64, out of range), is refused where it is parsed, with one
`error:` line and exit 2, no traceback and no file written; that flags which contradict each
other, and flags that would have no effect (--dynamic-lr without --dynamic, --seed where nothing
is drawn, --config with --resume, bench's flags of the mode not run), are refused; that an empty
path, for any flag or config key that takes one, is an error naming it, never "not given"; that
flags and key=value overrides mix in any order; that a run too large for the machine's memory is
refused before anything is allocated; and that a machine failing under a run (a full disk, the
run directory removed) ends it with one `error:` line that names the file and the last good
checkpoint, and exit 1; and that the `error:` line goes out in one write, so the ranks of a
distributed run, which share a stderr, cannot interleave theirs.

Run: pytest tests/test_cli_values.py
"""
import os
import shutil
import subprocess

import pytest
import yaml

from charrnn_torch.training import checkpoint, config as config_mod
from charrnn_torch import cli
from charrnn_torch.cli import main
from charrnn_torch.training.config import build_config
from charrnn_torch.errors import RunFailed
from charrnn_torch.training.trainer import Trainer, train
from conftest import tiny_overrides
from test_reliability import run_train, snapshot
from test_sample import run_dir  # noqa: F401 - the trained run these tests misuse


@pytest.fixture(scope="module")
def world(run_dir):
    """test_sample's trained run, and beside it a text, a directory and a file to misuse."""
    w = run_dir.parent
    (w / "text.txt").write_text("ROMEO: but soft")
    (w / "a_dir").mkdir(exist_ok=True)
    (w / "a_file").write_text("x")
    return w


def _cases(w):
    run, d, f, text = w / "run", w / "a_dir", w / "a_file", w / "text.txt"
    S = ["sample", "--checkpoint", run]
    ok = tiny_overrides(w / "corpus.txt", w / "new", **{"train.max_steps": 2})
    T = ["train", "--no-progress", *ok]
    return [
        (S + ["--temperature", "nan"], "--temperature must be a finite number"),
        (S + ["--temperature", "inf"], "--temperature must be a finite number"),
        (S + ["--top-p", "nan"], "--top-p must be a finite number"),
        (S + ["--seed", str(2**62 + 1)], "--seed must be <= 4611686018427387904"),
        (S + ["--seed", "-1"], "--seed must be >= 0"),
        (S + ["--length", str(10**20)], "--length must be <= 1000000000"),
        (S + ["--length", "ten"], "--length must be an integer"),
        (S + ["--num-samples", "0"], "--num-samples must be >= 1"),
        (S + ["--impl", "fast"], "--impl: invalid choice: 'fast'"),
        (S + ["--beam-width", "-1"], "--beam-width must be >= 0"),
        (S + ["--top-k", str(2**40)], "--top-k must be <="),
        (S + ["--device", "tpu"], "--device must be auto, cpu, cuda, cuda:N or mps"),
        (S + ["--device", "mps"], "--device mps: sampling, scoring, the look-inside page and export compute in float64"),
        (["visualize", "--checkpoint", run, "--device", "mps"], "--device mps: sampling, scoring"),
        (["export", "--checkpoint", run, "--format", "html", "--out", w / "p.html", "--device", "mps"],
         "--device mps: sampling, scoring"),
        (S + ["--out", d], "--out " + str(d) + " is a directory"),
        (S + ["--out", w / "missing" / "o.txt"], "does not exist"),
        (S + ["--score", d], "is a directory"),
        (S + ["--score", w / "nope.txt"], "file not found"),
        (S + ["--greedy", "--beam-width", "2"], "--greedy and --beam-width contradict"),
        (S + ["--greedy", "--temperature", "0.5"], "have no effect with it"),
        (S + ["--greedy", "--num-samples", "3"], "have no effect with it"),
        (S + ["--beam-width", "3", "--num-samples", "2"], "have no effect with it"),
        (S + ["--beam-width", "3", "--top-k", "2"], "have no effect with it"),
        (S + ["--score", text, "--prime", "RO"], "--score scores a file"),
        (S + ["--score", text, "--length", "5"], "--score scores a file"),
        (T + ["train.lr=.inf"], "train.lr: must be a finite number"),
        (T + ["train.min_lr_ratio=.nan"], "train.min_lr_ratio: must be a finite number"),
        (T + [f"train.seed={2**70}"], "train.seed: must be between -2**63 and 2**63 - 1"),
        (T + [f"train.seed={2**63 - 1}"], "train.seed: must be in [0, 2**62]"),
        (T + [f"train.eval_interval={2**64}"], "train.eval_interval: must be between"),
        (T + ["model.hidden_size=1000000"], "this run needs about"),
        (T + ["train.batch_size=1000000000", "train.stateful=false"], "this run needs about"),
        (["train", "--no-progress", "--resume", run, "--force"], "--force and --resume contradict"),
        (["fill", "--checkpoint", run, "--text", "ROMEO"], "the text has no '_' to fill"),
        (["fill", "--checkpoint", run, "--text", "RO#EO", "--mask-char", "#!"], "--mask-char must be a single character"),
        (["fill", "--checkpoint", run, "--text", "R\u00e9_"], "outside the model's vocabulary"),
        (["fill", "--checkpoint", run, "--text", "R_", "--top-k", "-1"], "--top-k must be >= 0"),
        (["fill", "--checkpoint", run, "--text-file", d], "is a directory"),
        (["sweep", "--sweep-dir", w / "s", "--parallel", "0", "--grid", "train.lr=1,2"], "--parallel must be >= 1"),
        (["sweep", "--sweep-dir", f, "--grid", "train.lr=1,2"], "--sweep-dir " + str(f) + " is a file"),
        (["bench", "--repeats", "0"], "--repeats must be >= 1"),
        (["bench", "--threads", "-1"], "--threads must be >= 0"),
        (["bench", "--small-threads", "0"], "--small-threads must be >= 1"),
        (["bench", "--json", d], "--json " + str(d) + " is a directory"),
        (["bench", "--device", "gpu"], "--device must be auto, cpu, cuda, cuda:N or mps"),
        (["bench", "--device", "mps"], "--device mps: the bench measures CPUs and CUDA devices"),
        (["bench", "--precisions", "fp64"], "unknown precision 'fp64'"),
        (["bench", "--shapes", "tiny,cpu"], "unknown shape 'tiny'"),
        (["bench", "--malloc", "jemalloc"], "invalid choice"),
        (["bench", "--clients", "0"], "--clients must be >= 1"),
        (["bench", "--serve", "http://127.0.0.1:9", "--corpus-mb", "1"], "--serve and --corpus-mb are two different"),
        (["serve", "--checkpoint", run, "--port", "65536"], "--port must be <= 65535"),
        (["serve", "--checkpoint", run, "--max-body-kb", "0"], "--max-body-kb must be >= 1"),
        # flags that would do nothing
        (S + ["--score", text, "--dynamic-lr", "0.01"], "--dynamic-lr has no effect without --dynamic"),
        (S + ["--score", text, "--dynamic-decay", "0"], "--dynamic-decay has no effect without --dynamic"),
        (S + ["--dynamic-lr", "0.01", "--dynamic-decay", "0"], "--dynamic-lr, --dynamic-decay have no effect"),
        (S + ["--greedy", "--seed", "3"], "--seed has no effect with --greedy, --beam-width or --score"),
        (S + ["--beam-width", "2", "--seed", "3"], "--seed has no effect with --greedy, --beam-width or --score"),
        (S + ["--score", text, "--seed", "3"], "--seed has no effect with --greedy, --beam-width or --score"),
        (["train", "--no-progress", "--resume", run, "--config", "shakespeare.yaml"],
         "--config has no effect with --resume"),
        (["bench", "--corpus-mb", "1", "--cells", "lstm"], "--cells has no effect with --corpus-mb"),
        (["bench", "--corpus-mb", "1", "--device", "cpu", "--repeats", "2"], "--device, --repeats have no effect"),
        (["bench", "--no-ddp"], "--no-ddp has no effect without --corpus-mb"),
        (["bench", "--work", d], "--work has no effect without --corpus-mb"),
    ]


def test_every_bad_value_is_one_error_line_and_exit_2(world, capsys):
    before = snapshot(world)
    failures = []
    for argv, needle in _cases(world):
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        if not (code == 2 and err.startswith("error: ") and err.count("\n") == 1 and needle in err):
            failures.append(f"{argv[0]} {[str(a) for a in argv[-3:]]}: exit {code}, stderr {err!r}")
    assert not failures, "\n".join(failures)
    assert snapshot(world) == before  # nothing written, nothing changed
    assert not (world / "new").exists() and not (world / "s").exists()


def _path_flags():
    """(command, flag) for every flag or positional of every command whose value is a path."""
    found = []
    for name, (make_parser, _, _) in cli.COMMANDS.items():
        for action in make_parser(f"charrnn {name}")._actions:
            if getattr(action.type, "is_path", False):
                found.append((name, action.option_strings[0] if action.option_strings else action.metavar))
    return found


def test_an_empty_path_is_an_error_for_every_path_flag_and_key(world, tmp_path, monkeypatch, capsys):
    """`--init-from "$CKPT"` with CKPT unset is `--init-from ""`: refused, never read as "not given"
    (which trained from scratch and exited 0)."""
    monkeypatch.chdir(tmp_path)  # "" read as "." would write here, not into the repository
    run = world / "run"
    flags = _path_flags()
    assert {("train", "--init-from"), ("train", "--resume"), ("train", "--config"), ("sample", "--checkpoint"),
            ("sample", "--prime-file"), ("sample", "--score"), ("sample", "--out"), ("visualize", "--text"),
            ("visualize", "--out"), ("visualize", "--checkpoint"), ("sweep", "--config"), ("sweep", "--sweep-dir"),
            ("bench", "--json"), ("bench", "--work"), ("plot", "RUN"), ("plot", "--out")} <= set(flags)
    ok = tiny_overrides(world / "corpus.txt", world / "new", **{"train.max_steps": 2})
    # After the flag: were "" let through, each command would still stop at once (a missing config,
    # an unknown shape) instead of sweeping or benchmarking for minutes.
    after = {"train": ["--no-progress", *ok], "sample": ["--checkpoint", run], "visualize": ["--checkpoint", run],
             "sweep": ["--config", world / "missing.yaml", "--sweep-dir", world / "s", "--grid", "train.lr=1,2"],
             "bench": ["--shapes", "none"], "plot": [run], "export": ["--checkpoint", run, "--format", "none"],
             "serve": ["--checkpoint", run, "--port", "65536"],
             "fill": ["--checkpoint", run, "--text", "R_"]}
    cases = [([name, flag, "", *after[name]] if flag.startswith("-") else [name, ""], flag) for name, flag in flags]
    cases += [(["train", "--no-progress", *ok, f"{key}="], key) for key in config_mod.PATH_KEYS]
    cases += [(["train", "--no-progress", "--resume", run, "train.init_from="], "train.init_from")]
    before = snapshot(world)
    failures = []
    for argv, name in cases:
        code = main([str(a) for a in argv])
        err = capsys.readouterr().err
        if not (code == 2 and err == f"error: {name} is an empty path; give a path (an unset shell variable "
                                     f"expands to nothing)\n"):
            failures.append(f"{argv[0]} {name}: exit {code}, stderr {err!r}")
    assert not failures, "\n".join(failures)
    assert snapshot(world) == before and not (world / "new").exists() and not (world / "s").exists()
    assert not list(tmp_path.iterdir())


def test_flags_and_overrides_in_any_order(world, capsys):
    """`--config X model.cell=gru --no-progress out_dir=runs/x`: overrides on both sides of a flag
    (argparse's plain parse_args refused the second group as "unrecognized arguments")."""
    assert main(["train", "--config", "shakespeare.yaml", "model.cell=gru", "--no-progress", "out_dir=runs/x",
                 "train.lr=0.01", "--print-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert (cfg["model"]["cell"], cfg["out_dir"], cfg["train"]["lr"]) == ("gru", "runs/x", 0.01)
    assert main(["train", "--resume", str(world / "run"), "train.max_steps=8", "--no-progress", "train.lr=0.005",
                 "--print-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert (cfg["train"]["max_steps"], cfg["train"]["lr"]) == (8, 0.005)


def test_memory_is_refused_before_allocating(world, monkeypatch):
    # The refusal comes from the estimate, never from the allocator: nothing was built.
    import charrnn_torch.training.trainer as trainer_mod
    monkeypatch.setattr(trainer_mod, "build_model", lambda *a, **k: pytest.fail("the model was built"))
    cfg = build_config({}, tiny_overrides(world / "corpus.txt", world / "huge", **{"model.hidden_size": 10**6}))
    with pytest.raises(Exception, match=r"needs about 1\d\d\d\d\.\d GiB"):
        train(cfg, progress=False, log=lambda *a: None)
    assert not (world / "huge").exists()


def test_training_bytes_counts_weights_and_buffers():
    from charrnn_torch.training.memory import training_bytes
    cfg = build_config({}, ["model.hidden_size=10", "model.num_layers=2", "train.batch_size=4", "train.seq_len=3"])
    V, H, rows = 5, 10, 12
    params = V * H + H * H + 2 * (H * H + H) + V * H + V  # W_xh of both layers, W_hh, b_h, W_hy, b_y
    assert training_bytes(cfg.model, cfg.train, V) == 4 * (4 * params + rows * (3 * H * 2 + 3 * V))
    cfg.train.dtype = "float64"
    assert training_bytes(cfg.model, cfg.train, V) == 8 * (4 * params + rows * (3 * H * 2 + 3 * V))


def test_full_disk_names_the_file_and_the_last_good_checkpoint(tmp_path, corpus_file):
    out = tmp_path / "r"
    args = tiny_overrides(corpus_file, out, **{"train.max_steps": 30, "train.eval_interval": 10,
                                               "train.sample_interval": 0})
    r = run_train(*args, hooks={"fail_write": "best.pt"})
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith(f"error: could not write {out / 'best.pt'} (No space left on device); "
                               f"the last good checkpoint is {out / 'ckpt.pt'} (step 10)")
    assert checkpoint.load(out / "ckpt.pt")["step"] == 10
    assert not list(out.glob(".*.tmp"))


def test_run_directory_removed_mid_run(tmp_path, corpus_file):
    class RemovesItsDirectory(Trainer):
        def evaluate(self):
            if self.state.step == 20:
                self.log.flush()  # TensorBoard's writer thread idle, so the removal is not raced
                shutil.rmtree(self.out_dir)
            return super().evaluate()

    cfg = build_config({}, tiny_overrides(corpus_file, tmp_path / "r", **{"train.max_steps": 30}))
    # Whichever write notices first, a checkpoint's or TensorBoard's, names what it could not write.
    with pytest.raises(RunFailed, match=r"^could not write .* \(No such file or directory\); "
                                        r"no checkpoint is left in .*r$"):
        RemovesItsDirectory(cfg, progress=False, log=lambda *a: None).run()


def _mount_small_tmpfs(path, size):
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small filesystem needs root")
def test_a_really_full_disk(tmp_path, corpus_file):
    """On a real 400 KB filesystem, whichever write fails first (a checkpoint or TensorBoard's),
    the run ends with one error line, exit 1, and the checkpoint left behind loads."""
    small = tmp_path / "small"
    if not _mount_small_tmpfs(small, "400k"):
        pytest.skip("cannot mount a tmpfs here")
    try:
        r = run_train(*tiny_overrides(corpus_file, small / "r", **{
            "model.hidden_size": 64, "train.max_steps": 400, "train.eval_interval": 10, "train.sample_interval": 0}))
        assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
        assert r.stderr.startswith("error: could not write ") and "No space left on device" in r.stderr
        assert "Traceback" not in r.stderr and "the last good checkpoint is" in r.stderr
        if (small / "r" / "ckpt.pt").exists():
            checkpoint.load(small / "r" / "ckpt.pt")
    finally:
        subprocess.run(["umount", str(small)])


class _Writes:
    """A stand-in stderr that keeps each write() apart, as an unbuffered stream hands them on."""
    def __init__(self):
        self.writes = []

    def write(self, s):
        self.writes.append(s)

    def flush(self):
        pass


def test_the_error_line_is_one_write(monkeypatch):
    # the ranks of a distributed run share a stderr: a line written in two pieces can interleave
    writes = _Writes()
    monkeypatch.setattr("sys.stderr", writes)
    assert main(["sample", "--length", "-3"]) == 2
    assert len(writes.writes) == 1 and writes.writes[0].startswith("error: ") and writes.writes[0].endswith("\n")
