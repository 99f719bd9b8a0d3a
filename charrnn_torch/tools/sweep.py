"""Grid sweeps: one training run per combination, each its own run directory.

Each run is a child process (``python -m charrnn_torch train ...``), so a crash
or an out-of-memory in one combination cannot take the others down, and
``--parallel K`` is just K children at a time. Re-running the same sweep skips
finished runs and resumes unfinished ones from their ckpt.pt.
"""
import csv
import io
import itertools
import subprocess
import sys
import threading
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
    return {"best_val": ck["best_val"], "last_val": ck.get("last_val"), "steps": ck["step"]}


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

    lock = threading.Lock()

    def one(plan):
        combo, ov, cfg = plan
        name = run_name(combo)
        run_dir = sweep_dir / name
        state, ck = _status(run_dir, cfg.train)
        row = {"run": name, **combo, "out_dir": str(run_dir)}
        if state == "done":
            with lock:
                log(f"[skip] {name}: already finished")
            return {**row, "status": "done (skipped)", **_result(ck)}
        if state == "partial":
            args = ["--resume", str(run_dir), f"train.max_steps={cfg.train.max_steps}",
                    f"train.max_minutes={cfg.train.max_minutes}"]
        else:
            args = ["--config", str(config_path), *ov, f"out_dir={run_dir}", "--force"]
        with lock:
            log(f"[{'resume' if state == 'partial' else 'start'}] {name}")
        proc = subprocess.run([sys.executable, "-m", "charrnn_torch", "train", "--no-progress", *args],
                              capture_output=True, text=True)
        files.make_dir(run_dir)
        files.write_file(run_dir / "train.log", (proc.stdout + proc.stderr).encode())
        if proc.returncode != 0:
            why = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            with lock:
                log(f"[failed] {name}: {why}")
            return {**row, "status": f"failed (exit {proc.returncode}): {why}", "best_val": None,
                    "last_val": None, "steps": None}
        with lock:
            log(f"[done] {name}")
        return {**row, "status": "done", **_result(checkpoint.load(run_dir / "ckpt.pt"))}

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        rows = list(pool.map(one, plans))
    rows.sort(key=lambda r: (r["best_val"] is None, r["best_val"] if r["best_val"] is not None else 0))
    fields = ["run", *[k for k, _ in grid], "best_val", "last_val", "steps", "status", "out_dir"]
    write_summary(sweep_dir / "summary.csv", fields, rows)
    return sweep_dir, fields, rows


def write_summary(path, fields, rows):
    table = io.StringIO(newline="")
    w = csv.DictWriter(table, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    files.write_file(path, table.getvalue().encode())


def format_rows(fields, rows):
    cols = [f for f in fields if f != "out_dir"]

    def cell(v):
        return f"{v:.4f}" if isinstance(v, float) else ("-" if v is None else str(v))

    table = [cols] + [[cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in table)
