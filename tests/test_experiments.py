"""Proves the experiment tooling: 2-process DDP over gloo on 127.0.0.1 equals a
single-process run with the same global batch (float64, 1e-10), also when resumed with
another number of ranks, and a failing 2-rank run exits cleanly; a 2x2 sweep runs (saying where
each run's log is, repeating each run's evaluations, counting runs done with the time left), summarises,
survives a failing combination and resumes; a grid of one value is one run; and a real
`tensorboard` server serves exactly the scalars and hparams that training logged.

Run: pytest tests/test_experiments.py   (starts subprocesses and a TensorBoard server)
"""
import csv
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from charrnn_torch.training import checkpoint
from charrnn_torch.cli import split_grid
from charrnn_torch.training.config import build_config
from charrnn_torch.training.trainer import train
from conftest import ROOT, read_scalars, run_script, tiny_overrides


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc, args, timeout=240, hooks=None):
    """The training command on nproc ranks; with hooks, through tests/hooks.py (see there)."""
    script = [str(ROOT / "scripts" / "train.py")] if hooks is None else [str(ROOT / "tests" / "hooks.py"),
                                                                        json.dumps(hooks)]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", *script, "--no-progress", *map(str, args)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)


DDP = {"train.dtype": "float64", "train.max_steps": 8, "train.eval_interval": 4, "train.batch_size": 4,
       "model.num_layers": 2, "train.sample_interval": 0, "train.lr_schedule": "cosine"}


def params_close(a, b, tol=1e-10):
    return all(torch.allclose(a[k], b[k], rtol=tol, atol=tol) for k in a)


@pytest.mark.slow
def test_ddp_two_processes_equal_single_process(tmp_path, corpus_file):
    single = run_script("train.py", "--config", "shakespeare.yaml", "--no-progress",
                        *tiny_overrides(corpus_file, tmp_path / "single", **DDP), env={"OMP_NUM_THREADS": "1"})
    assert single.returncode == 0, single.stderr
    ddp = torchrun(2, ["--config", "shakespeare.yaml", *tiny_overrides(corpus_file, tmp_path / "ddp", **DDP)])
    assert ddp.returncode == 0, ddp.stdout[-2000:] + ddp.stderr[-3000:]
    a = checkpoint.load(tmp_path / "single" / "ckpt.pt")
    b = checkpoint.load(tmp_path / "ddp" / "ckpt.pt")
    assert b["world_size"] == 2 and b["step"] == 8
    assert params_close(a["model"], b["model"])
    torch.testing.assert_close(a["hidden"], b["hidden"], rtol=1e-10, atol=1e-10)  # gathered from both ranks
    assert b["best_val"] == pytest.approx(a["best_val"], rel=1e-10)  # the all-reduced validation mean
    # only rank 0 wrote: one event file, one console summary
    assert len(list((tmp_path / "ddp").glob("events.*"))) == 1
    assert ddp.stdout.count("done:") == 1

    # resume the 2-rank run in 1 process to 16 steps == a single run of 16 steps
    longer = {**DDP, "train.max_steps": 16}
    r = run_script("train.py", "--no-progress", "--resume", tmp_path / "ddp", "train.max_steps=16",
                   env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    s16 = run_script("train.py", "--config", "shakespeare.yaml", "--no-progress",
                     *tiny_overrides(corpus_file, tmp_path / "single16", **longer), env={"OMP_NUM_THREADS": "1"})
    assert s16.returncode == 0, s16.stderr
    # A different max_steps changes the cosine horizon, so compare against a single
    # run interrupted the same way: 8 steps, then resumed to 16.
    r8 = run_script("train.py", "--config", "shakespeare.yaml", "--no-progress",
                    *tiny_overrides(corpus_file, tmp_path / "single8", **DDP), env={"OMP_NUM_THREADS": "1"})
    assert r8.returncode == 0
    r8b = run_script("train.py", "--no-progress", "--resume", tmp_path / "single8", "train.max_steps=16",
                     env={"OMP_NUM_THREADS": "1"})
    assert r8b.returncode == 0
    assert params_close(checkpoint.load(tmp_path / "ddp" / "ckpt.pt")["model"],
                        checkpoint.load(tmp_path / "single8" / "ckpt.pt")["model"])


@pytest.mark.slow
def test_ddp_run_that_fails_exits_cleanly(tmp_path, corpus_file):
    """A 2-rank run that diverges ends with its one error line and exit 1 on every rank, not an
    abort in teardown: the failing run's process group is freed too, its gloo threads joined."""
    args = tiny_overrides(corpus_file, tmp_path / "ddp", **{**DDP, "train.max_nonfinite": 2})
    ddp = torchrun(2, ["--config", "shakespeare.yaml", *args], hooks={"nan_steps": [2, 3], "report_threads": True})
    assert ddp.returncode == 1 and "terminate called" not in ddp.stderr, ddp.stderr[-3000:]
    assert "error: 2 consecutive steps with a non-finite loss" in ddp.stderr, ddp.stderr[-3000:]
    # (torchrun stops the other rank once one has exited non-zero, so it may not get to say)
    left = re.findall(r"^gloo threads left: (\d+)$", ddp.stderr, re.M)
    assert left and set(left) == {"0"}, ddp.stderr[-3000:]


@pytest.mark.slow
def test_sweep_2x2_summary_failure_and_resume(tmp_path, corpus_file):
    sweep_dir = tmp_path / "sweep"
    base = tiny_overrides(corpus_file, tmp_path / "unused", **{"train.max_steps": 6, "train.eval_interval": 3,
                                                                "train.sample_interval": 0})
    base = [o for o in base if not o.startswith(("out_dir=", "train.lr=", "model.hidden_size=", "train.batch_size="))]
    args = ["--config", "shakespeare.yaml", "--sweep-dir", sweep_dir,
            "--grid", "train.lr=0.01,0.003", "model.hidden_size=16,24", *base]
    r = run_script("sweep.py", *args, "--parallel", "2")
    assert r.returncode == 0, r.stderr + r.stdout
    with open(sweep_dir / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {(x["train.lr"], x["model.hidden_size"]) for x in rows} == {
        ("0.01", "16"), ("0.01", "24"), ("0.003", "16"), ("0.003", "24")}
    vals = [float(x["best_val"]) for x in rows]
    assert vals == sorted(vals)  # best first
    for x in rows:
        run = Path(x["out_dir"])
        assert checkpoint.load(run / "ckpt.pt")["step"] == 6
        acc, _ = read_scalars(run)
        assert "_hparams_/session_start_info" in acc.summary_metadata
    lines = r.stdout.splitlines()
    # What the user watches: each run's log path, its evaluations under its name, the overall count.
    assert lines[0] == (f"sweep: 4 runs in {sweep_dir}, 2 at a time; each run's output goes to <run>/train.log "
                        f"as it runs")
    for x in rows:
        log = Path(x["out_dir"]) / "train.log"
        assert f"[start] {x['run']}: log {log}" in lines and "done: 6 steps" in log.read_text()
        assert [ln.split("|")[0].split()[-1] for ln in lines if ln.startswith(f"  [{x['run']}] step ")] == ["3", "6"]
    counts = [ln for ln in lines if re.match(r"\[\d/4 runs done\] elapsed \d+:\d\d", ln)]
    assert [c[1] for c in counts] == ["1", "2", "3", "4"] and "left" in counts[0] and "left" not in counts[-1]
    head = next(i for i, ln in enumerate(lines) if ln.startswith("run "))
    assert [ln.split()[0] for ln in lines[head + 1:head + 5]] == [x["run"] for x in rows]  # printed best first

    # Re-run: finished combinations are skipped; an unfinished one is resumed.
    unfinished = Path(rows[-1]["out_dir"])
    assert run_script("train.py", "--no-progress", "--resume", unfinished, "train.max_steps=6").returncode == 0
    ck = checkpoint.load(unfinished / "ckpt.pt")
    raw = torch.load(unfinished / "ckpt.pt", weights_only=True)
    raw["step"] = 3  # pretend it was cut off halfway
    checkpoint.save(raw, unfinished / "ckpt.pt")
    again = run_script("sweep.py", *args)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("[skip]") == 3 and again.stdout.count("[resume]") == 1
    assert checkpoint.load(unfinished / "ckpt.pt")["step"] == 6 and ck["step"] == 6

    # A failing combination is reported and the others still run.
    bad = run_script("sweep.py", "--config", "shakespeare.yaml", "--sweep-dir", tmp_path / "sweep2",
                     "--grid", "train.batch_size=4,100000", *base)
    assert bad.returncode == 1
    assert "[failed] batch_size=100000" in bad.stdout and "[done] batch_size=4" in bad.stdout
    with open(tmp_path / "sweep2" / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["status"] == "done" and rows[1]["status"].startswith("failed")


def test_a_grid_of_one_value_is_one_run(tmp_path, corpus_file):
    # The first entry is an axis even with one value; later single values are settings for every run.
    assert split_grid(["train.lr=1e-3", "train.max_steps=5", "model.hidden_size=8,16"]) == (
        ["train.lr=1e-3", "model.hidden_size=8,16"], ["train.max_steps=5"])
    base = [o for o in tiny_overrides(corpus_file, tmp_path, **{"train.max_steps": 2, "train.eval_interval": 2,
                                                                "train.sample_interval": 0})
            if not o.startswith("out_dir=")]
    r = run_script("sweep.py", "--config", "shakespeare.yaml", "--sweep-dir", tmp_path / "s", "--grid", "train.lr=0.01",
                   *base)
    assert r.returncode == 0, r.stderr + r.stdout
    with open(tmp_path / "s" / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(x["run"], x["train.lr"], x["status"]) for x in rows] == [("lr=0.01", "0.01", "done")]
    assert checkpoint.load(tmp_path / "s" / "lr=0.01" / "ckpt.pt")["config"]["train"]["lr"] == 0.01


def test_sweep_rejects_bad_grid_before_running(tmp_path):
    r = run_script("sweep.py", "--sweep-dir", tmp_path / "s", "--grid", "train.lrr=1,2")
    assert r.returncode == 2 and r.stderr.startswith("error: unknown config key train.lrr")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("grid", [["train.lr=1e-3,2e-3", "train.lr=3e-3,4e-3"],  # two axes
                                  ["train.lr=1e-3,2e-3", "train.lr=5e-3"],  # an axis and an override
                                  ["model.hidden_size=8,16", "train.lr=1e-3", "train.lr=2e-3"]])  # two overrides
def test_a_key_given_twice_is_refused_before_running(tmp_path, grid, capsys):
    from charrnn_torch.cli import main

    assert main(["sweep", "--sweep-dir", str(tmp_path / "s"), "--grid", *grid]) == 2
    err = capsys.readouterr().err
    assert err == ("error: train.lr is given twice in the sweep (--grid entries and overrides): give each key once, "
                   "with all its values in one list (e.g. train.lr=v1,v2,v3)\n")
    assert not (tmp_path / "s").exists()


def _get(url, data=None):
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.mark.slow
def test_tensorboard_server_serves_what_training_logged(tmp_path, corpus_file):
    logdir = tmp_path / "runs"
    cfg = build_config({}, tiny_overrides(corpus_file, logdir / "tiny", **{"train.max_steps": 20, "train.eval_interval": 5}))
    summary = train(cfg, progress=False, log=lambda *a: None)
    port = free_port()
    tb = shutil.which("tensorboard") or str(Path(sys.executable).with_name("tensorboard"))
    proc = subprocess.Popen([tb, "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port),
                             "--reload_interval", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        tags = None
        while time.time() < deadline:
            try:
                tags = _get(f"{base}/data/plugin/scalars/tags")
                if "tiny" in tags and "loss/val" in tags["tiny"]:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert tags and "tiny" in tags, f"tensorboard did not come up: {tags}"
        assert {"loss/train", "loss/val", "bpc/val", "lr", "grad_norm", "throughput/chars_per_sec",
                "loss/train_smooth"} <= set(tags["tiny"])
        series = _get(f"{base}/data/plugin/scalars/scalars?run=tiny&tag=loss/val")
        got = [(int(step), value) for _, step, value in series]
        want = summary["val_log"]
        assert [s for s, _ in got] == [s for s, _ in want] == [5, 10, 15, 20]
        for (_, g), (_, w) in zip(got, want):
            assert g == pytest.approx(w, rel=1e-6)  # stored as float32
        exp = _get(f"{base}/data/plugin/hparams/experiment", data=json.dumps({"experimentName": ""}).encode())
        hp_names = {h["name"] for h in exp["hparamInfos"]}
        assert {"train.lr", "model.hidden_size", "train.optimizer"} <= hp_names
        metrics = {m["name"]["tag"] for m in exp["metricInfos"]}
        assert {"loss/val", "bpc/val"} <= metrics
        groups = _get(f"{base}/data/plugin/hparams/session_groups", data=json.dumps({
            "experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                                                      "STATUS_RUNNING"],
            "colParams": [{"metric": {"tag": "loss/val"}}], "startIndex": 0, "sliceSize": 10}).encode())
        session = groups["sessionGroups"][0]
        assert session["hparams"]["train.lr"] == pytest.approx(0.01)
        metric = next(m for m in session["metricValues"] if m["name"]["tag"] == "loss/val")
        assert metric["value"] == pytest.approx(summary["val_loss"], rel=1e-6)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
