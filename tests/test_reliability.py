"""Proves the reliability promises: bit-exact resume on CPU (stateful, dropout, regularisers,
random windows, bidirectional, with a schedule: each in this process, and once through Ctrl-C in a
real training process), atomic checkpoints that survive SIGKILL mid-write, SIGINT and
SIGTERM handling, best.pt only improving, runs never overwritten, the non-finite guard,
determinism, and a one-line `error: ...` with exit 2 for every bad input, changing no file.

Run: pytest tests/test_reliability.py   (the subprocess tests take ~1 minute)
"""
import builtins
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from charrnn_torch.training import checkpoint
from charrnn_torch.cli import main
from charrnn_torch.training.config import build_config
from charrnn_torch.training.trainer import TrainingDiverged, train
from conftest import ROOT, read_scalars, run_script, tiny_overrides
from hooks import hooked_train, interrupted_and_resumed

QUIET = ["--no-progress"]


def run_train(*args, env=None, cwd=None, hooks=None):
    """The training command; with hooks (see tests/hooks.py), its test-only faults switched on."""
    if "--resume" not in map(str, args):  # a resumed run takes its own config: --config is refused there
        args = ("--config", "shakespeare.yaml", *args)
    if hooks is None:
        return run_script("train.py", *QUIET, *args, env=env, cwd=cwd)
    return subprocess.run([sys.executable, str(ROOT / "tests" / "hooks.py"), json.dumps(hooks), *QUIET,
                           *map(str, args)], capture_output=True, text=True, cwd=cwd or ROOT,
                          env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})), timeout=300)


def start_hooked(hooks, *args):
    return subprocess.Popen([sys.executable, str(ROOT / "tests" / "hooks.py"), json.dumps(hooks), *QUIET,
                             *map(str, args)], cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def final_params(run_dir, name="ckpt.pt"):
    return torch.load(Path(run_dir) / name, weights_only=True)["model"]


def train_losses(run_dir):
    _, s = read_scalars(run_dir)
    return s["loss/train"]


MODES = {
    "stateful": {},
    "dropout": {"model.num_layers": 2, "model.dropout": 0.3},
    "regularisers": {"model.num_layers": 2, "model.dropout": 0.3, "model.dropout_output": 0.2,
                     "model.weight_drop": 0.2, "model.variational_dropout": "true", "model.cell": "lstm"},
    "random_windows": {"train.stateful": "false", "model.dropout": 0.0},
    "bidirectional": {"model.bidirectional": "true", "train.stateful": "false", "model.num_layers": 2,
                      "model.cell": "gru", "model.dropout": 0.3, "model.dropout_output": 0.2, "model.weight_drop": 0.2},
}


RESUME_EXTRA = {"train.max_steps": 24, "train.eval_interval": 8, "train.log_interval": 2,
                "train.warmup_steps": 4, "train.lr_schedule": "cosine"}


def assert_same_run(whole_dir, part_dir):
    a, b = final_params(whole_dir), final_params(part_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    la, lb = train_losses(whole_dir), train_losses(part_dir)
    assert la == lb  # same steps, no duplicates, identical values
    assert [s for s, _ in lb] == list(range(2, 25, 2))


@pytest.mark.slow
def test_resume_in_a_real_process_is_bit_exact(tmp_path, corpus_file):
    """Ctrl-C in a real training process: exit 130, the resume command said, and the resumed run
    ends where the uninterrupted one does, bit for bit."""
    whole = run_train(*tiny_overrides(corpus_file, tmp_path / "whole", **RESUME_EXTRA))
    assert whole.returncode == 0, whole.stderr
    # interrupted at step 11: not an eval step, so resuming needs the mid-interval state too
    part = run_train(*tiny_overrides(corpus_file, tmp_path / "part", **RESUME_EXTRA), hooks={"interrupt_at": 11})
    assert part.returncode == 130, part.stderr
    assert "resume with: python scripts/train.py --resume" in part.stderr
    assert checkpoint.load(tmp_path / "part" / "ckpt.pt")["step"] == 11
    resumed = run_train("--resume", tmp_path / "part")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(tmp_path / "whole", tmp_path / "part")


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_resume_is_bit_exact(tmp_path, corpus_file, mode):
    """Each mode's state (dropout masks' RNG, random windows, the carried state...) survives an
    interrupt at step 11 and a resume: the trainer in this process, the real process once above."""
    extra = {**RESUME_EXTRA, **MODES[mode]}
    quiet = {"progress": False, "log": lambda *a: None}
    train(build_config({}, tiny_overrides(corpus_file, tmp_path / "whole", **extra)), **quiet)
    interrupted_and_resumed(build_config({}, tiny_overrides(corpus_file, tmp_path / "part", **extra)), 11, **quiet)
    assert_same_run(tmp_path / "whole", tmp_path / "part")


@pytest.mark.slow
def test_resume_with_raised_max_steps_continues(tmp_path, corpus_file):
    out = tmp_path / "r"
    assert run_train(*tiny_overrides(corpus_file, out, **{"train.max_steps": 10})).returncode == 0
    r = run_train("--resume", out, "train.max_steps=20")
    assert r.returncode == 0, r.stderr
    assert checkpoint.load(out / "ckpt.pt")["step"] == 20
    steps = [s for s, _ in train_losses(out)]
    assert steps == sorted(set(steps)) and steps[-1] == 20
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["max_steps"] == 20


@pytest.mark.slow
def test_sigkill_mid_checkpoint_write_keeps_previous(tmp_path, corpus_file):
    out = tmp_path / "r"
    assert run_train(*tiny_overrides(corpus_file, out, **{"train.max_steps": 10})).returncode == 0
    before = (out / "ckpt.pt").read_bytes()
    proc = start_hooked({"pause_ckpt_write": 60}, "--resume", out, "train.max_steps=20")
    try:
        tmp = _wait_for(lambda: next((p for p in out.glob(".ckpt.pt.*.tmp") if p.stat().st_size > 0), None),
                        "the writer never wrote the temp file")
        assert tmp.stat().st_size < len(before) * 1.5  # written, not yet renamed into place
    finally:
        proc.kill()
        proc.wait()
    assert (out / "ckpt.pt").read_bytes() == before
    assert checkpoint.load(out / "ckpt.pt")["step"] == 10
    r = run_train("--resume", out, "train.max_steps=20")
    assert r.returncode == 0, r.stderr
    assert checkpoint.load(out / "ckpt.pt")["step"] == 20
    assert not list(out.glob(".*.tmp"))


def _wait_for(probe, what, deadline_s=120):
    """Poll until probe() returns something truthy, and return it. The deadline is generous: it
    only turns a hang into a failure, and is never what a passing run waits on."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        found = probe()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out after {deadline_s} s: {what}")


def _start_long_run(out, corpus_file, hooks=None, resume=None):
    args = ["--resume", str(resume), "train.max_steps=100000"] if resume else [
        "--config", "shakespeare.yaml", *tiny_overrides(corpus_file, out, **{
            "train.max_steps": 100000, "train.eval_interval": 100000, "train.sample_interval": 0})]
    proc = start_hooked(hooks or {}, *args)
    lines = [proc.stdout.readline()]  # the start line is printed once the signal handlers are in place
    if lines[0].startswith("encoded "):  # a new corpus: its cache was built first
        lines.append(proc.stdout.readline())
    if "parameters on cpu from step" not in lines[-1]:
        proc.kill()
        pytest.fail("".join(lines) + proc.communicate()[1])
    return proc


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_checkpoint_and_exits(tmp_path, corpus_file, sig, code):
    out = tmp_path / "r"
    proc = _start_long_run(out, corpus_file)
    time.sleep(1.0)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "resume with: python scripts/train.py --resume" in err and "Traceback" not in err
    ck = checkpoint.load(out / "ckpt.pt")
    assert ck["step"] > 0
    _, scalars = read_scalars(out)  # TensorBoard was flushed: every log_interval (5) steps has its point
    logged = [step for step, _ in scalars.get("loss/train", [])]
    assert logged == list(range(5, ck["step"] + 1, 5)), (logged, ck["step"])


def test_second_ctrl_c_exits_at_once_without_touching_checkpoint(tmp_path, corpus_file):
    out = tmp_path / "r"
    assert run_train(*tiny_overrides(corpus_file, out, **{"train.max_steps": 10})).returncode == 0
    before = (out / "ckpt.pt").read_bytes()
    # The write pauses for 10 minutes, so only the second Ctrl-C can end the run within the deadline.
    proc = _start_long_run(out, corpus_file, hooks={"pause_ckpt_write": 600}, resume=out)
    try:
        proc.send_signal(signal.SIGINT)  # first: finish the step and start writing ckpt.pt (which pauses)
        _wait_for(lambda: list(out.glob(".ckpt.pt.*.tmp")), "the first Ctrl-C never started the checkpoint write")
        proc.send_signal(signal.SIGINT)  # second: leave now
        proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130
    assert (out / "ckpt.pt").read_bytes() == before


def test_best_only_replaced_by_better(tmp_path, tiny_text):
    out = tmp_path / "r"
    # Validation text is the training text reversed: it first gains from the shared
    # character frequencies, then loses as the model learns forward-only bigrams.
    corpus_file = tmp_path / "mirror.txt"
    corpus_file.write_text(tiny_text + tiny_text[::-1][: len(tiny_text) // 8])
    cfg = build_config({}, tiny_overrides(corpus_file, out, **{
        "train.max_steps": 60, "train.eval_interval": 3, "train.lr": 0.05, "train.lr_schedule": "constant",
        "train.sample_interval": 0}))
    train(cfg, progress=False, log=lambda *a: None)
    _, s = read_scalars(out)
    vals = s["loss/val"]
    best_step, best_val = min(vals, key=lambda sv: sv[1])
    assert any(v > best_val for st, v in vals if st > best_step), "validation never got worse: test is vacuous"
    best = checkpoint.load(out / "best.pt")
    assert best["step"] == best_step and best["best_val"] == pytest.approx(best_val, rel=1e-6)


def _write_config(dir_, corpus_file, out_dir):
    cfg = build_config({}, tiny_overrides(corpus_file, out_dir, **{"train.max_steps": 4, "train.sample_interval": 0}))
    from charrnn_torch.training.config import dump_yaml
    p = dir_ / "tiny.yaml"
    p.write_text(dump_yaml(cfg))
    return p


@pytest.mark.slow
def test_same_command_twice_keeps_both_runs(tmp_path, corpus_file):
    cfg = _write_config(tmp_path, corpus_file, "runs/tiny")
    for _ in range(3):
        r = run_script("train.py", "--config", cfg, *QUIET, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert runs == ["tiny", "tiny-2", "tiny-3"]
    for name in runs:
        assert (tmp_path / "runs" / name / "ckpt.pt").exists() and list((tmp_path / "runs" / name).glob("events.*"))


@pytest.mark.slow
def test_explicit_out_dir_holding_a_run_is_refused_unless_forced(tmp_path, corpus_file):
    out = tmp_path / "r"
    args = tiny_overrides(corpus_file, out, **{"train.max_steps": 4, "train.sample_interval": 0})
    assert run_train(*args).returncode == 0
    before = (out / "ckpt.pt").read_bytes()
    r = run_train(*args)
    assert r.returncode == 2 and "--resume" in r.stderr and "--force" in r.stderr
    assert (out / "ckpt.pt").read_bytes() == before
    assert run_train("--force", *args).returncode == 0


def test_nonfinite_steps_are_skipped_and_counted(tmp_path, corpus_file):
    out = tmp_path / "r"
    cfg = build_config({}, tiny_overrides(corpus_file, out, **{"train.max_steps": 20, "train.sample_interval": 0}))
    summary = hooked_train(cfg, nan_steps={3, 4, 12}, progress=False, log=lambda *a: None)
    assert summary["nonfinite_steps"] == 3
    _, s = read_scalars(out)
    assert s["train/nonfinite_steps"] == [(3, 1.0), (4, 2.0), (12, 3.0)]
    assert all(torch.isfinite(p).all() for p in checkpoint.load(out / "ckpt.pt")["model"].values())


def test_too_many_nonfinite_steps_stop_and_keep_last_good_checkpoint(tmp_path, corpus_file):
    out = tmp_path / "r"
    cfg = build_config({}, tiny_overrides(corpus_file, out, **{
        "train.max_steps": 40, "train.eval_interval": 5, "train.max_nonfinite": 4, "train.sample_interval": 0}))
    with pytest.raises(TrainingDiverged, match="4 consecutive"):
        hooked_train(cfg, nan_steps=range(6, 40), progress=False, log=lambda *a: None)
    ck = checkpoint.load(out / "ckpt.pt")
    assert ck["step"] == 5
    # and no update happened on the bad steps: resuming from step 5 with no bad steps
    # reproduces an uninterrupted run
    r = run_train("--resume", out, hooks={"nan_steps": [6, 7, 8, 9]})
    assert r.returncode == 1 and r.stderr.startswith("error: 4 consecutive steps") and "Traceback" not in r.stderr


def test_same_seed_same_losses(tmp_path, corpus_file):
    runs = []
    for name in ("a", "b"):
        cfg = build_config({}, tiny_overrides(corpus_file, tmp_path / name, **{
            "train.max_steps": 20, "train.log_interval": 1, "model.dropout": 0.2, "model.num_layers": 2}))
        runs.append(train(cfg, progress=False, log=lambda *a: None)["train_log"])
    assert runs[0] == runs[1] and len(runs[0]) == 20
    cfg = build_config({}, tiny_overrides(corpus_file, tmp_path / "c", **{
        "train.max_steps": 20, "train.log_interval": 1, "model.dropout": 0.2, "model.num_layers": 2,
        "train.seed": 7}))
    assert train(cfg, progress=False, log=lambda *a: None)["train_log"] != runs[0]  # the seed matters


# ---------------------------------------------------------------- every bad input

def snapshot(*dirs):
    out = {}
    for d in dirs:
        for p in sorted(Path(d).rglob("*")):
            if p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.fixture
def world(tmp_path, corpus_file):
    """A finished run and a few bad files, to point the commands at."""
    run = tmp_path / "run"
    cfg = build_config({}, tiny_overrides(corpus_file, run, **{"train.max_steps": 4, "train.sample_interval": 0}))
    train(cfg, progress=False, log=lambda *a: None)
    files = tmp_path / "files"
    files.mkdir()
    (files / "bad.yaml").write_text("train: {lr: [\n")
    (files / "list.yaml").write_text("- a\n- b\n")
    (files / "empty.txt").write_text("")
    (files / "short.txt").write_text("abcdefghij" * 3)
    (files / "noval.txt").write_text("abcdefghij" * 40)
    (files / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1") * 50)
    (files / "a_file").write_text("x")
    (files / "empty_run").mkdir()
    full = (run / "ckpt.pt").read_bytes()
    (files / "truncated.pt").write_bytes(full[: len(full) // 2])
    (files / "garbage.pt").write_bytes(os.urandom(4096))
    torch.save({"format": checkpoint.FORMAT, "payload": Evil(files / "MARKER")}, files / "evil.pt")
    changed = tmp_path / "changed.txt"
    changed.write_text(corpus_file.read_text() + "XYZ")
    return {"run": run, "files": files, "corpus": corpus_file, "tmp": tmp_path}


def _cases(w):
    f, run, corpus = w["files"], w["run"], w["corpus"]
    ok = tiny_overrides(corpus, w["tmp"] / "new", **{"train.max_steps": 4})
    T = ["train"]
    cases = [
        ("1 config missing", T + ["--config", f / "nope.yaml"], "config file not found"),
        ("2 invalid yaml", T + ["--config", f / "bad.yaml"], "not valid YAML"),
        ("3 not a mapping", T + ["--config", f / "list.yaml"], "must hold a mapping"),
        ("4 unknown key", T + ok + ["bogus=1"], "unknown config key bogus"),
        ("4 unknown nested key", T + ok + ["train.lrr=1"], "unknown config key train.lrr; valid keys in train"),
        ("5 wrong type", T + ok + ["model.hidden_size=big"], "model.hidden_size: expected an integer"),
        ("6 hidden_size", T + ok + ["model.hidden_size=0"], "model.hidden_size: must be > 0"),
        ("6 num_layers", T + ok + ["model.num_layers=0"], "model.num_layers: must be > 0"),
        ("6 batch_size", T + ok + ["train.batch_size=-2"], "train.batch_size: must be > 0"),
        ("6 seq_len", T + ok + ["train.seq_len=0"], "train.seq_len: must be > 0"),
        ("6 max_steps", T + ok + ["train.max_steps=0"], "train.max_steps: must be > 0"),
        ("7 lr", T + ok + ["train.lr=0"], "train.lr: must be > 0"),
        ("7 grad_clip", T + ok + ["train.grad_clip=-1"], "train.grad_clip: must be >= 0"),
        ("8 val_fraction", T + ok + ["data.val_fraction=1.5"], "data.val_fraction: must be in (0, 1)"),
        ("9 optimizer", T + ok + ["train.optimizer=lion"], "train.optimizer: must be one of"),
        ("9 schedule", T + ok + ["train.lr_schedule=warm"], "train.lr_schedule: must be one of"),
        ("9 device", T + ok + ["device=gpu0"], "device: must be auto, cpu, cuda, cuda:N or mps"),
        ("11 data missing", T + ok + [f"data.path={f / 'nope.txt'}"], "data file not found"),
        ("12 data is a folder of no file", T + ok + [f"data.path={f / 'empty_run'}"], "no file in the folder"),
        ("13 empty corpus", T + ok + [f"data.path={f / 'empty.txt'}"], "is empty"),
        ("14 too short for a batch", T + ok + [f"data.path={f / 'short.txt'}"], "too short"),
        ("14 too short for validation", T + ok + [f"data.path={f / 'noval.txt'}", "data.val_fraction=0.001"],
         "validation split is too short"),
        ("15 invalid utf-8", T + ok + [f"data.path={f / 'latin1.txt'}"], "not valid UTF-8"),
        ("16 out_dir is a file", T + ok + [f"out_dir={f / 'a_file'}"], "is a file"),
        ("16 out_dir not writable", T + ok + [f"out_dir={f / 'a_file' / 'sub'}"], "not writable"),
        ("17 no =", T + ok + ["train.lr"], "malformed override 'train.lr'"),
        ("17 unparsable", T + ok + ["train.lr=[1,"], "cannot parse value"),
        ("18 resume without checkpoint", T + ["--resume", f / "empty_run"], "no checkpoint in"),
        ("18 resume missing path", T + ["--resume", f / "nothing"], "checkpoint not found"),
        ("19 truncated checkpoint", T + ["--resume", f / "truncated.pt"], "truncated or corrupt"),
        ("19 garbage checkpoint", T + ["--resume", f / "garbage.pt"], "truncated or corrupt"),
        ("20 pickle that runs code", T + ["--resume", f / "evil.pt"], "refusing to load checkpoint"),
        ("20 pickle via sample", ["sample", "--checkpoint", f / "evil.pt"], "refusing to load checkpoint"),
        ("21 architecture", T + ["--resume", run, "model.hidden_size=64"], "cannot change model.hidden_size"),
        ("21 data path", T + ["--resume", run, f"data.path={w['tmp'] / 'changed.txt'}"], "cannot change data.path"),
        ("22 prime", ["sample", "--checkpoint", run, "--prime", "\u00e9\u00e9"],
         "no character of the prime is in the vocabulary (not in it: '\u00e9')"),
        ("23 temperature", ["sample", "--checkpoint", run, "--temperature", "0"], "--temperature must be > 0"),
        ("23 top-p", ["sample", "--checkpoint", run, "--top-p", "1.01"], "--top-p must be in (0, 1]"),
        ("23 top-k", ["sample", "--checkpoint", run, "--top-k", "-3"], "--top-k must be >= 0"),
        ("23 length", ["sample", "--checkpoint", run, "--length", "-5"], "--length must be >= 0"),
        ("24 run dir without checkpoints", ["sample", "--checkpoint", f / "empty_run"], "no checkpoint in"),
    ]
    if not torch.cuda.is_available():
        cases.append(("10 cuda without cuda", T + ok + ["device=cuda"], "CUDA is not available"))
    return cases


def test_every_bad_input_is_one_line_exit_2_and_changes_nothing(world, capsys):
    before = snapshot(world["tmp"])
    failures = []
    for name, argv, needle in _cases(world):
        code = main([str(a) for a in argv] + (["--no-progress"] if argv[0] == "train" else []))
        out, err = capsys.readouterr()
        ok = code == 2 and err.startswith("error: ") and err.count("\n") == 1 and needle in err
        if not ok:
            failures.append(f"{name}: exit {code}, stderr {err!r}")
    assert not failures, "\n".join(failures)
    assert not (world["files"] / "MARKER").exists()
    assert snapshot(world["tmp"]) == before
    assert not (world["tmp"] / "new").exists()


def test_vocabulary_change_refused_on_resume(world, capsys):
    corpus = world["corpus"]
    original = corpus.read_text()
    corpus.write_text(original + "QZ")  # same path, new characters
    before = snapshot(world["run"])
    assert main(["train", "--resume", str(world["run"]), "train.max_steps=8", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot resume: the vocabulary") and err.count("\n") == 1
    assert snapshot(world["run"]) == before


def test_bad_input_in_a_real_process_has_no_traceback(world):
    r = run_train("model.hidden_size=big")
    assert r.returncode == 2 and r.stderr == "error: model.hidden_size: expected an integer, got 'big'\n"
    r = run_script("sample.py", "--checkpoint", world["files"] / "evil.pt")
    assert r.returncode == 2 and r.stderr.startswith("error: refusing") and "Traceback" not in r.stderr
    assert not (world["files"] / "MARKER").exists()


@pytest.mark.slow
def test_resume_overrides_apply_or_are_refused(tmp_path, corpus_file):
    out = tmp_path / "r"
    args = tiny_overrides(corpus_file, out, **{"train.max_steps": 10, "train.lr_schedule": "constant",
                                               "train.sample_interval": 0})
    assert run_train(*args).returncode == 0
    r = run_train("--resume", out, "train.max_steps=20", "train.lr=0.002")
    assert r.returncode == 0, r.stderr
    _, s = read_scalars(out)
    lrs = dict(s["lr"])
    assert lrs[10] == pytest.approx(0.01) and lrs[20] == pytest.approx(0.002)  # the new lr took effect
    before = (out / "ckpt.pt").read_bytes()
    for bad in ("train.batch_size=8", "train.seq_len=8", "train.optimizer=sgd", "train.stateful=false",
                "model.num_layers=2"):
        r = run_train("--resume", out, "train.max_steps=30", bad)
        assert r.returncode == 2 and r.stderr.startswith(f"error: cannot change {bad.split('=')[0]}"), r.stderr
    assert (out / "ckpt.pt").read_bytes() == before
