"""The corpus benchmark: how fast a big text starts training, and how much memory it takes.

Each measurement is a real ``train.py`` run of a small model (a few steps) in a child process,
under a fresh wrapper process whose RUSAGE_CHILDREN gives the peak RSS of that run alone (for
a 2-rank torchrun, the largest rank's). Start-up is the wall-clock time from launching the
process to the run's first line ("training ..."), which comes just before the first step; it
includes importing torch. The cache build speed is the trainer's own report.
"""
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from .. import files

SMALL_MODEL = ["model.hidden_size=64", "train.batch_size=16", "train.seq_len=64", "train.max_steps=3",
               "train.eval_interval=1000", "train.sample_interval=0", "data.val_fraction=0.0005", "device=cpu"]

# Peak RSS of one command: the wrapper waits for it and reports its children's maximum.
WRAPPER = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
           "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
           "sys.exit(rc)")


def write_corpus(path, megabytes, seed_text):
    """seed_text repeated to `megabytes` MB (1e6 bytes), written in large blocks."""
    block = seed_text.encode("utf-8")
    block = block * max(1, (8 << 20) // len(block))
    target, done = int(megabytes * 1e6), 0
    with files.writing(path) as write:
        while done < target:
            part = block[:target - done]
            write(part)
            done += len(part)
    return path


def timed_run(argv, env=None):
    """Run a command (with the wrapper); returns wall seconds to its 'training' line, its peak RSS
    in MB, its output and its exit status."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", WRAPPER, *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=dict(os.environ, **(env or {})))
    lines, started = [], None
    for line in proc.stdout:
        lines.append(line)
        if started is None and line.startswith("training "):
            started = time.perf_counter() - t0
    proc.wait()
    peak = next((int(ln.split()[1]) / 1024 for ln in lines if ln.startswith("PEAK_RSS_KB")), float("nan"))
    return {"startup_s": started, "peak_rss_mb": peak, "rc": proc.returncode, "output": "".join(lines)}


def train_cmd(corpus, out_dir):
    script = Path(__file__).resolve().parents[2] / "scripts" / "train.py"
    return [sys.executable, str(script), "--no-progress", "--force", f"data.path={corpus}", f"out_dir={out_dir}",
            *SMALL_MODEL]


def build_rate(output):
    m = re.search(r"encoded .* \(([\d.]+) MB\) .* in ([\d.]+) s", output)
    return (float(m.group(1)), float(m.group(2))) if m else (None, None)


def measure(corpus, work, label, ddp=False):
    out = work / f"run-{label}"
    cmd = train_cmd(corpus, out)
    if ddp:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *cmd[1:]]
    r = timed_run(cmd, env={"OMP_NUM_THREADS": "1"} if ddp else None)
    if r["rc"] != 0:
        raise RuntimeError(f"{label}: train.py failed ({r['rc']}):\n{r['output'][-2000:]}")
    mb, secs = build_rate(r["output"])
    row = {"run": label, "startup_s": r["startup_s"], "peak_rss_mb": r["peak_rss_mb"],
           "built_mb": mb, "build_s": secs, "build_mb_per_s": mb / secs if mb else None}
    print(f"{label:<34} start {row['startup_s']:6.2f} s | peak RSS {row['peak_rss_mb']:7.0f} MB"
          + (f" | cache built: {mb:.0f} MB in {secs:.1f} s = {mb / secs:.0f} MB/s" if mb else ""), flush=True)
    return row


def main(sizes_mb, work, seed_corpus, ddp=True, json_path=None):
    """Tiny shakespeare as the baseline, then each size twice (building the cache, then reusing it)."""
    work = Path(work)
    files.make_dir(work)
    seed_text = Path(seed_corpus).read_text(encoding="utf-8")
    base = work / "tiny.txt"
    files.write_file(base, seed_text.encode("utf-8"))
    rows = [measure(base, work, "tiny shakespeare, first start"), measure(base, work, "tiny shakespeare, second start")]
    for mb in sizes_mb:
        corpus = write_corpus(work / f"corpus-{mb}MB.txt", mb, seed_text)
        rows.append(measure(corpus, work, f"{mb} MB, first start (builds cache)"))
        rows.append(measure(corpus, work, f"{mb} MB, second start"))
        if ddp and mb == min(sizes_mb):
            rows.append(measure(corpus, work, f"{mb} MB, 2 DDP ranks (largest rank)", ddp=True))
        corpus.unlink()
        for p in work.glob(f"corpus-{mb}MB.txt.*.ids"):
            p.unlink()
    if json_path:
        files.write_file(json_path, files.json_text(rows, indent=1).encode())
    return rows
