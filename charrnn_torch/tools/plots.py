"""Validation loss against minutes of training, for runs side by side (``charrnn plot``).

matplotlib is an optional extra (``pip install -e ".[plot]"``): only this module needs it.
"""
import io
from pathlib import Path

from ..errors import UserError
from ..files import write_atomic


def val_curve(run_dir):
    """[(minutes of training, loss/val)] from a run's TensorBoard events. The minutes are the
    run's stored training time (time/train_minutes), so a resumed run's pause and the evaluations
    do not stretch its curve; runs logged before that tag existed fall back to wall-clock minutes
    since their first event."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = Path(run_dir)
    if not is_run(run_dir):
        raise UserError(f"{run_dir} holds no TensorBoard events (expected a run directory)")
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    if "loss/val" not in acc.Tags()["scalars"]:
        return []  # not evaluated yet
    points = acc.Scalars("loss/val")
    if "time/train_minutes" in acc.Tags()["scalars"]:
        minutes = {e.step: e.value for e in acc.Scalars("time/train_minutes")}
        return [(minutes[e.step], e.value) for e in points if e.step in minutes]
    starts = [e.wall_time for tag in acc.Tags()["tensors"] for e in acc.Tensors(tag)[:1]]
    t0 = min(starts + [points[0].wall_time])
    return [((e.wall_time - t0) / 60, e.value) for e in points]


def is_run(path):
    return path.is_dir() and any(path.glob("events.out.tfevents.*"))


def find_runs(paths):
    """(the run directories among paths, [(path, why it was skipped)]). A folder of runs (a sweep's)
    stands for its runs; anything else that is not a run (summary.csv, sweep.yaml, a folder without
    events, as a shell's runs/sweep/* brings in) is skipped. A path that does not exist is a typo:
    an error."""
    runs, skipped = [], []
    for path in map(Path, paths):
        if not path.exists():
            raise UserError(f"RUN {path}: no such file or directory")
        inner = sorted(d for d in path.iterdir() if is_run(d)) if path.is_dir() and not is_run(path) else []
        if is_run(path) or inner:
            runs += inner or [path]
        else:
            skipped.append((path, "not a run directory" if path.is_file() else "no TensorBoard events"))
    return runs, skipped


def plot_runs(paths, out, labels=None, title="validation loss against minutes of training"):
    """Draw each run's loss/val against minutes of training into a PNG at out (paths: find_runs').
    Returns the line that says what was drawn and what was skipped."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError('plotting needs matplotlib: pip install -e ".[plot]"') from None
    run_dirs, skipped = find_runs(paths)
    if labels is not None and len(labels) != len(run_dirs):
        raise UserError(f"--labels has {len(labels)} names for {len(run_dirs)} runs")
    drawn = []
    for run, label in zip(run_dirs, labels or [r.name for r in run_dirs]):
        curve = val_curve(run)
        if curve:
            drawn.append((label, curve))
        else:
            skipped.append((run, "no loss/val yet"))
    said = "; skipped " + ", ".join(f"{p} ({why})" for p, why in skipped) if skipped else ""
    if not drawn:
        raise UserError(f"nothing to draw{said}")
    _draw(plt, drawn, title, out)
    return f"wrote {out}: {len(drawn)} run{'s' if len(drawn) != 1 else ''}{said}"


def _draw(plt, drawn, title, out):
    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=110)
    for label, curve in drawn:
        minutes, losses = zip(*curve)
        ax.plot(minutes, losses, marker="o", markersize=2.5, linewidth=1.4, label=f"{label} (best {min(losses):.3f})")
    ax.set_xlabel("minutes of training (evaluation and pauses excluded)")
    ax.set_ylabel("loss/val (nats per character)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)  # beside the axes: never over a curve
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_atomic(Path(out), buf.getvalue())
