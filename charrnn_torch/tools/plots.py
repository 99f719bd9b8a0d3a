"""Validation loss against minutes of training, or gradients through time, for runs side by side
(``charrnn plot``).

matplotlib is an optional extra (``pip install -e ".[plot]"``): only this module needs it.
"""
import io
from pathlib import Path

from ..errors import UserError
from ..files import write_file
from ..insight import gradients
from ..training import checkpoint, runs

FORMATS = ("png", "svg", "pdf")  # matplotlib's writers for them need nothing beyond matplotlib


def out_format(out):
    """The format a plot is written in: its file's extension, one of FORMATS."""
    ext = Path(out).suffix[1:].lower()
    if ext not in FORMATS:
        allowed = ", ".join("." + f for f in FORMATS[:-1]) + f" or .{FORMATS[-1]}"
        raise UserError(f"--out {out}: the format follows the extension, and it must be {allowed} "
                        f"(got {'.' + ext if ext else 'none'})")
    return ext


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


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError('plotting needs matplotlib: pip install -e ".[plot]"') from None
    return plt


def plot_runs(paths, out, labels=None, title="validation loss against minutes of training"):
    """Draw each run's loss/val against minutes of training into out, in the format of its extension
    (paths: find_runs'). Returns the line that says what was drawn and what was skipped."""
    out_format(out)
    plt = _pyplot()
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
    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=110)
    for label, curve in drawn:
        minutes, losses = zip(*curve)
        ax.plot(minutes, losses, marker="o", markersize=2.5, linewidth=1.4, label=f"{label} (best {min(losses):.3f})")
    ax.set_xlabel("minutes of training (evaluation and pauses excluded)")
    ax.set_ylabel("loss/val (nats per character)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)  # beside the axes: never over a curve
    _save(fig, plt, out)
    return f"wrote {out}: {len(drawn)} run{'s' if len(drawn) != 1 else ''}{said}"


def _save(fig, plt, out):
    fig.tight_layout()
    out = Path(out)
    buf = io.BytesIO()
    fig.savefig(buf, format=out_format(out))
    plt.close(fig)
    write_file(out, buf.getvalue())
    return out


def run_gradients(run_dir, chars=gradients.WINDOWS * gradients.WINDOW + 1):
    """(model, step, insight/gradients.py's report) for a run's checkpoint on its validation text, trained
    and at step 0."""
    model, vocab, ckpt = checkpoint.load_model(run_dir)
    checkpoint.refuse_bidirectional(model, run_dir, "have its gradients through time drawn")
    text, _ = runs.validation_text(ckpt, chars)
    return model, ckpt.get("step"), gradients.report(model, runs.initial_model(ckpt, model), vocab.encode(text))


def plot_gradients(run_dirs, out, labels=None, title="how far back the loss reaches"):
    """Each run's mean ||dl_T/dh_t|| against the distance T - t, per layer, trained (solid) and at step
    0 (dashed), one panel per run side by side, on one log scale, into out (its extension's format)."""
    out_format(out)
    plt = _pyplot()
    found = [run_gradients(r) for r in run_dirs]
    fig, axes = plt.subplots(1, len(found), figsize=(4.2 * len(found), 3.6), dpi=110, sharey=True, squeeze=False)
    for ax, label, (model, step, g) in zip(axes[0], labels or [Path(r).name for r in run_dirs], found):
        for when, style in (("trained", "-"), ("init", "--")):
            for l, curve in enumerate(g[when]["grad"]["h"]):
                ax.semilogy(g[when]["distance"], curve, style, color=f"C{l}", linewidth=1.3,
                            label=f"layer {l}, {'trained' if when == 'trained' else 'step 0'}")
        ax.set_title(f"{label}: {model.cell} {model.num_layers}x{model.hidden_size}, step {step}", fontsize=9)
        ax.set_xlabel("distance T - t (characters)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("mean ||dl_T / dh_t||")
    fig.suptitle(title, fontsize=10)
    return _save(fig, plt, out)

