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
    if not run_dir.is_dir() or not any(run_dir.glob("events.out.tfevents.*")):
        raise UserError(f"{run_dir} holds no TensorBoard events (expected a run directory)")
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    if "loss/val" not in acc.Tags()["scalars"]:
        raise UserError(f"{run_dir} has no loss/val yet")
    points = acc.Scalars("loss/val")
    if "time/train_minutes" in acc.Tags()["scalars"]:
        minutes = {e.step: e.value for e in acc.Scalars("time/train_minutes")}
        return [(minutes[e.step], e.value) for e in points if e.step in minutes]
    starts = [e.wall_time for tag in acc.Tags()["tensors"] for e in acc.Tensors(tag)[:1]]
    t0 = min(starts + [points[0].wall_time])
    return [((e.wall_time - t0) / 60, e.value) for e in points]


def plot_runs(run_dirs, out, labels=None, title="validation loss against minutes of training"):
    """Draw each run's loss/val against minutes of training into a PNG at out."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError('plotting needs matplotlib: pip install -e ".[plot]"') from None
    curves = [val_curve(r) for r in run_dirs]
    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=110)
    for run, label, curve in zip(run_dirs, labels or [Path(r).name for r in run_dirs], curves):
        minutes, losses = zip(*curve)
        ax.plot(minutes, losses, marker="o", markersize=2.5, linewidth=1.4, label=f"{label} (best {min(losses):.3f})")
    ax.set_xlabel("minutes of training (evaluation and pauses excluded)")
    ax.set_ylabel("loss/val (nats per character)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)  # beside the axes: never over a curve
    fig.tight_layout()
    out = Path(out)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_atomic(out, buf.getvalue())
    return out
