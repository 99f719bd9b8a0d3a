"""Proves that the README's commands run as written, in order, each after the one before it, as a
user who has just cloned the repository would run them (test_layout only parses them): every
command of its ```bash blocks runs in a fresh folder, and each succeeds. The only changes: a tiny
corpus, tiny model sizes and small step counts or budgets, added as key=value overrides to each
training command for the keys it does not set itself (a resumed run's step count and the sweep's
are the exceptions: overridden after theirs); letters.txt, the README's own small text, is a small text; the `charrnn` console
script runs as `python -m charrnn_torch` from this checkout. What cannot run here is in SKIPPED,
with why, and nothing else is skipped: a command added to the README runs here, or is named there.
"""
import os
import shlex
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from test_layout import command_of, readme_commands

TINY = {"model.hidden_size": 16, "train.batch_size": 4, "train.seq_len": 16}
BUDGETED = ("python_code.yaml", "shakespeare_gpu.yaml")  # train.max_minutes ends them: a short budget here
SKIPPED = {
    "pip": "installs packages: this checkout is installed already",
    "python -m pytest": "runs this test suite",
    "bash scripts/gpu_check.sh": "the prepared GPU run (test_gpu_check runs its --dry-run)",
    "charrnn bench": "minutes of timing at full sizes (test_bench runs every row at small ones)",
    "python scripts/bench.py": "minutes of timing, on CUDA (test_bench)",
}
NEEDS_CUDA = ("shakespeare_gpu.yaml",)


def skip_reason(words):
    line = " ".join(words)
    for start, why in SKIPPED.items():
        if line.startswith(start):
            return why
    if any(n in line for n in NEEDS_CUDA) and not torch.cuda.is_available():
        return "a CUDA config, and this machine has no GPU"
    return None


def overrides_for(name, words, corpus):
    """What this test adds to one README command: see the module's docstring."""
    if name == "sweep":  # its grid sets model.hidden_size
        return [f"data.path={corpus}", "train.batch_size=4", "train.seq_len=16", "train.max_steps=10",
                "train.eval_interval=5"]
    if name != "train" or "--print-config" in words:
        return []
    if "--resume" in words:
        return ["train.max_steps=1600"]
    if "--init-from" in words:  # the checkpoint's size; the batch is left for the fine-tune to fit to letters.txt
        return ["model.hidden_size=16", "train.seq_len=16", "train.max_steps=20"]
    given = {w.split("=")[0] for w in words if "=" in w and not w.startswith("-")}
    extra = {"data.path": corpus, **TINY}
    if any(config in words for config in BUDGETED):
        extra = {**TINY, "data.stdlib_max_bytes": 30_000, "train.max_minutes": 0.02}
    elif not given:  # the first run: `sample --step 1500` reads its ckpt-1500.pt
        extra["train.max_steps"] = 1500
    elif "train.max_steps" not in given:
        extra["train.max_steps"] = 20
    return [f"{k}={v}" for k, v in extra.items() if k not in given]


def argv_of(words):
    ours = command_of(words)
    name, args = ours if ours else (None, words)
    if words[0] == "charrnn" or words[:3] == ["python", "-m", "charrnn_torch"]:
        return name, [sys.executable, "-m", "charrnn_torch", name, *args]
    if words[0] == "python":
        return name, [sys.executable, str(ROOT / words[1]), *words[2:]]
    return name, words


@pytest.mark.slow
def test_the_readmes_commands_run_in_order(tmp_path, tiny_text):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text(tiny_text + "ROMEO: but soft.\nJULIET: a rose.\n" * 40)
    work = tmp_path / "clone"
    work.mkdir()
    (work / "letters.txt").write_text("Dear Romeo, the fox is quick; yours, Juliet.\n" * 24)  # new: D R , ; y J
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               XDG_CACHE_HOME=str(tmp_path / "cache"), PYTHONUNBUFFERED="1")
    ran, skipped = [], []
    for words in readme_commands():
        why = skip_reason(words)
        if why:
            skipped.append(" ".join(words))
            continue
        name, argv = argv_of(words)
        argv += overrides_for(name, words, corpus) + (["--no-progress"] if name == "train" else [])
        r = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"{shlex.join(words)}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
        assert "Traceback" not in r.stderr, r.stderr
        ran.append((words, r))
    said = {shlex.join(w): r.stdout for w, r in ran}
    assert len(said["charrnn sample --checkpoint runs/shakespeare --greedy --step 1500"]) > 400  # 500 characters
    fine_tune = said[next(c for c in said if "--init-from" in c)]
    assert "fine-tuning on" in fine_tune and "training with train.batch_size=" in fine_tune
    assert (work / "runs" / "shakespeare" / "ckpt-1500.pt").is_file()
    assert (work / "viz" / "index.html").is_file() and (work / "runs" / "compare.png").is_file()
    used = {start for c in skipped for start in SKIPPED if c.startswith(start)}
    assert used == set(SKIPPED) and len(ran) >= 18  # no stale entry in SKIPPED; the rest all ran
