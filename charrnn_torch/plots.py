"""Validation loss against wall-clock minutes, for runs side by side (``scripts/plot_runs.py``).

matplotlib is an optional extra (``pip install -e ".[plot]"``): only this module needs it.
"""
from pathlib import Path

from .errors import UserError


def val_curve(run_dir):
    """[(minutes since the run's first event, loss/val)] from a run's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not any(run_dir.glob("events.out.tfevents.*")):
        raise UserError(f"{run_dir} holds no TensorBoard events (expected a run directory)")
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    if "loss/val" not in acc.Tags()["scalars"]:
        raise UserError(f"{run_dir} has no loss/val yet")
    starts = [e.wall_time for tag in acc.Tags()["tensors"] for e in acc.Tensors(tag)[:1]]
    points = acc.Scalars("loss/val")
    t0 = min(starts + [points[0].wall_time])
    return [((e.wall_time - t0) / 60, e.value) for e in points]


def plot_runs(run_dirs, out, labels=None, title="validation loss against wall-clock time"):
    """Draw each run's loss/val against minutes into a PNG at out."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError('plotting needs matplotlib: pip install -e ".[plot]"') from None
    curves = [val_curve(r) for r in run_dirs]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for run, label, curve in zip(run_dirs, labels or [Path(r).name for r in run_dirs], curves):
        minutes, losses = zip(*curve)
        ax.plot(minutes, losses, marker="o", markersize=2.5, linewidth=1.4, label=f"{label} (best {min(losses):.3f})")
    ax.set_xlabel("wall-clock minutes (training and evaluation)")
    ax.set_ylabel("loss/val (nats per character)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out)  # atomic: a reader never sees half a PNG
    return out
