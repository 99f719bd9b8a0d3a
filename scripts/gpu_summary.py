"""Gather what scripts/gpu_check.sh left in a results folder into summary.json and a short table.

    python scripts/gpu_summary.py RESULTS_DIR

Exit status: 0 if every stage that ran exited 0, else 1.
"""
import json
import math
import re
import statistics
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from charrnn_torch import files
from charrnn_torch.tools.bench import shown


def stages(results):
    path = results / "stages.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def tests(results):
    path = results / "tests.xml"
    if not path.exists():
        return None
    suites = ET.parse(path).getroot()
    suites = [suites] if suites.tag == "testsuite" else list(suites)
    out = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    out["failed"] = [f"{c.get('classname')}::{c.get('name')}" for s in suites for c in s
                     if c.find("failure") is not None or c.find("error") is not None]
    return out


def run_result(run_dir, log_path):
    """Final and best validation loss, steps, training time and median chars/s of one training run."""
    out = {"run": run_dir.name}
    done = re.search(r"done: (\d+) steps, val loss ([\d.]+) .*best ([\d.]+)",
                     log_path.read_text(errors="replace") if log_path.exists() else "")
    if done:
        out.update(steps=int(done[1]), val_loss=float(done[2]), best_val=float(done[3]))
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
        acc.Reload()
        scalars = {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}
    except Exception as e:  # no events (the run died at start): say so, keep the rest
        out["tensorboard_error"] = f"{type(e).__name__}: {e}"
        return out
    val = [(e.step, e.value) for e in scalars.get("loss/val", [])]
    rate = [e.value for e in scalars.get("throughput/chars_per_sec", [])]
    if val:
        out.update(val_curve=val, best_val_tb=min(v for _, v in val), last_val_tb=val[-1][1])
        out["best_bpc"] = out["best_val_tb"] / math.log(2)
    if rate:
        out["median_chars_per_sec"] = statistics.median(rate)
    return out


def main(argv):
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    results = Path(argv[0])
    summary = {"run": json.loads((results / "run.json").read_text()) if (results / "run.json").exists() else {},
               "stages": stages(results), "tests": tests(results)}
    for name in ("bench", "steps"):
        if (results / f"{name}.json").exists():
            summary[name] = json.loads((results / f"{name}.json").read_text())
    runs = sorted((results / "runs").glob("*")) if (results / "runs").is_dir() else []
    summary["quality"] = [run_result(r, results / f"train_{r.name}.log") for r in runs]
    summary["samples"] = {p.stem: p.read_text(errors="replace") for p in sorted(results.glob("sample_*.txt"))}
    files.write_file(results / "summary.json", files.json_text(summary, indent=2).encode())

    for s in summary["stages"]:
        print(f"stage {s['stage']:<8} rc={s['rc']:<4} {s['seconds']:>7.1f}s")
    if summary["tests"]:
        t = summary["tests"]
        print(f"tests: {t['tests']} run, {t['failures']} failed, {t['errors']} errors, {t['skipped']} skipped "
              f"{' '.join(t['failed'])}")
    for name in ("bench", "steps"):
        for r in summary.get(name, {}).get("rows", []):
            # a failed row (a torch module the machine cannot run at a precision, say) has no numbers
            print(f"{name} {r['shape']:<12} {r['impl']:<26} {shown(r['chars_per_sec'], '12,.0f')} chars/s "
                  f"{shown(r['pct_peak'], '6.1f')}% peak {shown(r['peak_mem_mb'], '8.1f')} MB {r.get('note', '')}")
    for q in summary["quality"]:
        print(f"quality {q['run']:<12} steps={q.get('steps')} val={q.get('val_loss')} best={q.get('best_val')} "
              f"chars/s={shown(q.get('median_chars_per_sec'), ',.0f')}")
    return 0 if summary["stages"] and all(s["rc"] == 0 for s in summary["stages"]) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
