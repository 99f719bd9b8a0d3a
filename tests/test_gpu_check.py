"""Proves the prepared GPU run (scripts/gpu_check.sh) works before any GPU minute is spent: its
--dry-run runs every stage at tiny sizes on the CPU and gathers their results into summary.json;
a stage that fails is recorded, the next stage still runs, and the exit status says so; bad
arguments get one error line and exit 2.

Run: pytest tests/test_gpu_check.py
"""
import json
import os
import subprocess
import sys

import pytest

from charrnn_torch.tools import bench
from conftest import ROOT

SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def run_check(*args, python=sys.executable, timeout=900):
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          env=dict(os.environ, PYTHON=str(python)), timeout=timeout)


def dry_run(tmp_path, stages):
    """gpu_check.sh --dry-run of stages: each ran, in order, and passed. Returns its summary."""
    r = run_check("--dry-run", "--stages", ",".join(stages), tmp_path / "res")
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads((tmp_path / "res" / "summary.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == stages
    assert all(s["rc"] == 0 for s in summary["stages"])
    return summary


# Every stage is dry-run, in two halves that can run side by side (pytest -n): the measuring
# stages, then the training ones.
@pytest.mark.slow
def test_dry_run_runs_every_measuring_stage(tmp_path):
    summary = dry_run(tmp_path, ["env", "tests", "bench", "steps"])
    assert summary["tests"]["tests"] > 0 and not summary["tests"]["failed"]
    shapes = {row["shape"] for row in summary["bench"]["rows"]}
    assert shapes == {f"smoke{c}-{p}" for c in ("", "-lstm", "-gru") for p in ("fp32", "tf32", "bf16")}
    for row in summary["bench"]["rows"]:
        if bench.is_torch_module(row["impl"]) and (row.get("note") or "").startswith("failed: "):
            continue  # a torch module this CPU cannot run at that precision (oneDNN's bf16 LSTM without AVX-512 bf16)
        assert row["chars_per_sec"] > 0, row
    steps = {(row["shape"], row["impl"]) for row in summary["steps"]["rows"]}
    assert {impl for _, impl in steps} == {"CharRNN eager", "CharRNN sync-free", *(
        f"nn.{m} stack {mode}" for m in ("RNN", "LSTM", "GRU") for mode in ("eager", "sync-free"))}
    assert all(row["chars_per_sec"] > 0 for row in summary["steps"]["rows"])


@pytest.mark.slow
def test_dry_run_runs_every_training_stage(tmp_path):
    summary = dry_run(tmp_path, ["quality", "compare", "graphed", "record"])
    runs = {q["run"]: q for q in summary["quality"]}
    assert set(runs) == {"gpu", "gpu_variant", "cmp_rnn", "cmp_lstm", "cmp_gru", "graphs_off", "graphs_on",
                         "rec_gru", "rec_lstm", "rec_gru3"}
    assert "train.cuda_graphs=auto: eager training steps" in (tmp_path / "res" / "train_graphs_on.log").read_text()
    assert all(q["steps"] > 0 and q["best_val"] > 0 and q["val_curve"] for q in runs.values())
    assert all(text.startswith("ROMEO:") and len(text) > 300 for text in summary["samples"].values())


def test_failed_stage_is_recorded_and_the_next_still_runs(tmp_path):
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\ncase "$*" in *scripts/bench.py*) echo broken >&2; exit 3;; esac\n'
                       f'exec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    r = run_check("--dry-run", "--stages", "bench,env", tmp_path / "res", python=wrapper)
    assert r.returncode != 0
    stages = [json.loads(line) for line in (tmp_path / "res" / "stages.jsonl").read_text().splitlines()]
    assert [(s["stage"], s["rc"]) for s in stages] == [("bench", 3), ("env", 0)]
    assert "broken" in (tmp_path / "res" / "bench.log").read_text()


@pytest.mark.parametrize("args,needle", [
    (["--stages", "warp", "x"], "unknown stage warp"),
    (["--stages", "compare,nope", "x"], "unknown stage nope"),
    (["--turbo", "x"], "unknown option --turbo"),
    (["--stages"], "--stages needs a value"),  # not bash's own "parameter null or not set", exit 1
    (["--dry-run", "--stages"], "--stages needs a value"),
    (["--stages", "", "x"], "--stages needs a value"),
    ([""], "RESULTS_DIR is an empty path"),
    ([], "usage"),
    (["a", "b"], "usage"),
])
def test_bad_arguments(tmp_path, args, needle):
    r = run_check(*args)
    assert r.returncode == 2 and needle in r.stderr
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
