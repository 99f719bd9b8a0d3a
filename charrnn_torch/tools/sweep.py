"""Grid sweeps: one training run per combination, each its own run directory.

Each run is a child process (``python -m charrnn_torch train ...``), so a crash
or an out-of-memory in one combination cannot take the others down, and
``--parallel K`` is just K children at a time. Re-running the same sweep skips
finished runs and resumes unfinished ones from their ckpt.pt.
"""
import csv
import io
import itertools
import math
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from .. import files
from ..training import checkpoint
from ..training.config import build_config, parse_override
from ..errors import UserError


def parse_grid(items):
    """['train.lr=1e-3,3e-3', ...] -> [('train.lr', ['1e-3', '3e-3']), ...] (values kept as typed)."""
    grid = []
    for item in items:
        key, sep, raw = item.partition("=")
        values = [v.strip() for v in raw.split(",")]
        if not sep or not key.strip() or not all(values):
            raise UserError(f"malformed --grid entry {item!r}: expected key=v1,v2,...")
        for v in values:
            parse_override(f"{key}={v}")  # a value YAML cannot read fails here, before any run starts
        grid.append((key.strip(), values))
    return grid


def check_keys_once(grid, overrides):
    """Refuse a key given twice, among the grid's axes and the overrides: one would silently win."""
    seen = set()
    for key in [k for k, _ in grid] + [parse_override(o)[0] for o in overrides]:
        if key in seen:
            raise UserError(f"{key} is given twice in the sweep (--grid entries and overrides): give each key "
                            f"once, with all its values in one list (e.g. {key}=v1,v2,v3)")
        seen.add(key)


def combinations(grid):
    keys = [k for k, _ in grid]
    for values in itertools.product(*[vs for _, vs in grid]):
        yield dict(zip(keys, values))


def run_name(combo):
    return "__".join(f"{k.split('.')[-1]}={v}" for k, v in combo.items()) or "base"


def _status(run_dir, train_cfg):
    """("new" | "partial" | "done", the checkpoint or None). A run is done at max_steps or when
    its wall-clock budget is spent."""
    ckpt = run_dir / "ckpt.pt"
    if not ckpt.exists():
        return "new", None
    try:
        ck = checkpoint.load(ckpt)
    except UserError:
        return "new", None
    spent = train_cfg.max_minutes and ck.get("train_seconds", 0.0) >= 60 * train_cfg.max_minutes
    return ("done" if ck["step"] >= train_cfg.max_steps or spent else "partial"), ck


def _result(ck):
    return {"best_val": ck["best_val"], "last_val": ck.get("last_val"), "val_bpc": ck.get("val_bpc"), "steps": ck["step"]}


def run_sweep(config_path, grid_items, overrides=(), sweep_dir=None, parallel=1, log=print):
    """Run every combination; returns the rows of summary.csv, best first."""
    from ..training.config import read_yaml

    base = read_yaml(config_path)
    grid = parse_grid(grid_items)
    check_keys_once(grid, overrides)
    combos = list(combinations(grid))
    sweep_dir = Path(sweep_dir or f"runs/sweep-{Path(config_path).stem}")
    plans = []
    for combo in combos:  # validate every combination before running any
        ov = list(overrides) + [f"{k}={v}" for k, v in combo.items()]
        cfg = build_config(base, ov)
        plans.append((combo, ov, cfg))
    files.make_dir(sweep_dir)
    files.write_file(sweep_dir / "sweep.yaml", yaml.safe_dump(
        {"config": str(config_path), "grid": grid_items, "overrides": list(overrides)}, sort_keys=False).encode())
    log(f"sweep: {len(plans)} runs in {sweep_dir}, {min(parallel, len(plans))} at a time; each run's output goes "
        f"to <run>/{LOG_NAME} as it runs")
    progress = Progress(len(plans), parallel, log)

    def one(plan):
        combo, ov, cfg = plan
        row = {"run": run_name(combo), **combo, "out_dir": str(sweep_dir / run_name(combo))}
        row.update(_run_one(sweep_dir / row["run"], config_path, ov, cfg, progress))
        progress.finished(row["run"], row["status"])
        return row

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        rows = list(pool.map(one, plans))
    rows.sort(key=lambda r: (r["best_val"] is None, r["best_val"] if r["best_val"] is not None else 0))
    fields = ["run", *[k for k, _ in grid], "best_val", "last_val", "val_bpc", "steps", "status", "out_dir"]
    write_summary(sweep_dir / "summary.csv", fields, rows)
    return sweep_dir, fields, rows


def write_summary(path, fields, rows):
    table = io.StringIO(newline="")
    w = csv.DictWriter(table, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    files.write_file(path, table.getvalue().encode())


LOG_NAME = "train.log"
ECHOED = re.compile(r"^(step +\d+ \||done: |error: |dynamic evaluation )")  # a child's lines the sweep repeats


def _run_one(run_dir, config_path, ov, cfg, progress):
    """One combination: skipped when finished, resumed when cut off, else started; its output
    streamed to run_dir/train.log and its progress lines repeated under its name."""
    name = run_dir.name
    state, ck = _status(run_dir, cfg.train)
    if state == "done":
        progress.say(f"[skip] {name}: already finished")
        return {"status": "done (skipped)", **_result(ck)}
    if state == "partial":
        args = ["--resume", str(run_dir), f"train.max_steps={cfg.train.max_steps}",
                f"train.max_minutes={cfg.train.max_minutes}"]
    else:
        args = ["--config", str(config_path), *ov, f"out_dir={run_dir}", "--force"]
    files.make_dir(run_dir)
    progress.start(name, f"[{'resume' if state == 'partial' else 'start'}] {name}: log {run_dir / LOG_NAME}")
    code, last = _stream([sys.executable, "-m", "charrnn_torch", "train", "--no-progress", *args],
                         run_dir / LOG_NAME, lambda line: progress.say(f"  [{name}] {line}"))
    if code != 0:
        why = last or f"exit {code}"
        progress.say(f"[failed] {name}: {why}")
        return {"status": f"failed (exit {code}): {why}", "best_val": None, "last_val": None, "steps": None}
    progress.say(f"[done] {name}")
    return {"status": "done", **_result(checkpoint.load(run_dir / "ckpt.pt"))}


def _stream(cmd, log_path, echo):
    """Run cmd with its stdout and stderr going, line by line as they come, to log_path (to read or
    tail while it runs), its progress lines also to echo. (exit status, its last error line or None)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    last = None
    with files.live_log(log_path) as write, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                              text=True, env=env) as proc:
        for line in proc.stdout:
            write(line)
            line = line.rstrip("\n")
            if ECHOED.match(line):
                echo(line)
            if line.startswith("error: "):
                last = line
    return proc.returncode, last


class Progress:
    """The sweep's console: each line whole (runs in parallel share it), and after each run an
    overall line: runs done of the total, time elapsed, and an estimate of the time left from the
    runs that actually ran (skipped ones take no time)."""

    def __init__(self, total, parallel, log):
        self.total, self.parallel, self.log = total, max(1, parallel), log
        self.lock, self.t0, self.done, self.ran = threading.Lock(), time.monotonic(), 0, []
        self.started = {}

    def say(self, line):
        with self.lock:
            self.log(line)

    def start(self, name, line):
        with self.lock:
            self.started[name] = time.monotonic()
            self.log(line)

    def finished(self, name, status):
        with self.lock:
            self.done += 1
            if name in self.started:
                self.ran.append(time.monotonic() - self.started.pop(name))
            left = self.total - self.done
            eta = (sum(self.ran) / len(self.ran) * math.ceil(left / self.parallel)) if self.ran and left else None
            self.log(f"[{self.done}/{self.total} runs done] elapsed {_clock(time.monotonic() - self.t0)}"
                     + (f", about {_clock(eta)} left" if eta is not None else ""))


def _clock(seconds):
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def format_rows(fields, rows):
    cols = [f for f in fields if f != "out_dir"]

    def cell(v):
        return f"{v:.4f}" if isinstance(v, float) else ("-" if v is None else str(v))

    table = [cols] + [[cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in table)
