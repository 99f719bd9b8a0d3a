"""Everything a run shows: TensorBoard scalars, text, histograms and hparams, the tqdm bar, and
the console lines. Rank 0 gets a RunLogger; other ranks a NullLogger that does nothing, so the
training loop never asks which rank it is on before logging."""
import functools
import math
import threading

from ..errors import RunFailed
from ..files import could_not_write

HUGE_BINS = 64  # a histogram's bins for values beyond TensorBoard's own (a diverging run's weights)


def _guarded(method):
    """A failed TensorBoard write (a full disk, say) ends the run with one clear error."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with could_not_write(f"TensorBoard events in {self.out_dir}"):
            return method(self, *args, **kwargs)
    return wrapper


class QuietWriterThreads:
    """TensorBoard writes from a background thread; when a write fails, that thread prints a
    traceback, and the same error reaches the main thread at its next write, where the run
    reports it in one line. While installed, the writer thread is kept quiet; other threads'
    errors print as before. remove() puts back the hook it replaced."""

    def __init__(self):
        self.previous = threading.excepthook
        threading.excepthook = self.hook

    def hook(self, args):
        if type(args.thread).__name__ == "_AsyncWriterThread" and issubclass(args.exc_type, OSError):
            return
        self.previous(args)

    def remove(self):
        if threading.excepthook == self.hook:
            threading.excepthook = self.previous


class RunLogger:
    """config_yaml: the run's config as YAML text (TensorBoard's config tab); train_cfg: the train
    section, whose limits the progress bar counts."""

    def __init__(self, out_dir, config_yaml, train_cfg, start_step, resumed, progress, console, cloze=False):
        self.out_dir, self.console = out_dir, console
        # A bidirectional model's validation loss sees both sides of each character: not a language
        # model's loss/val, so it is never logged under that name.
        self.val_tag = "val_cloze" if cloze else "val"
        self.quiet_threads = QuietWriterThreads()
        self.open(config_yaml, train_cfg, start_step, resumed, progress)

    @_guarded
    def open(self, config_yaml, train_cfg, start_step, resumed, progress):
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        # purge_step drops events a killed run logged after its last checkpoint,
        # so the resumed steps follow on with no duplicates.
        self.writer = SummaryWriter(str(self.out_dir), purge_step=start_step + 1 if resumed else None)
        self.writer.add_text("config", "```yaml\n" + config_yaml + "```", start_step)
        self.bar = tqdm(total=train_cfg.max_steps, initial=start_step, disable=not progress,
                        dynamic_ncols=True, desc="train")

    def line(self, text):
        self.console(text)

    def step_done(self):
        self.bar.update(1)

    @_guarded
    def train_scalars(self, step, loss, smooth, lr, grad_norm, chars_per_sec, clipped=None):
        """clipped: the fraction of steps since the last log whose gradient norm was clipped."""
        for tag, value in (("loss/train", loss), ("loss/train_smooth", smooth), ("bpc/train", loss / math.log(2)),
                           ("lr", lr), ("grad_norm", grad_norm), ("throughput/chars_per_sec", chars_per_sec)):
            self.writer.add_scalar(tag, value, step)
        if clipped is not None:
            self.writer.add_scalar("grad_clipped_fraction", clipped, step)
        self.bar.set_postfix(loss=f"{loss:.3f}", chars_s=f"{chars_per_sec:,.0f}")

    @_guarded
    def nonfinite(self, step, total):
        self.writer.add_scalar("train/nonfinite_steps", total, step)

    @_guarded
    def validation(self, step, val, best, improved, model, train_seconds):
        self.writer.add_scalar(f"loss/{self.val_tag}", val, step)
        # Training time, not wall-clock: a resumed run's pause and its evaluations do not count.
        self.writer.add_scalar("time/train_minutes", train_seconds / 60, step)
        self.writer.add_scalar(f"bpc/{self.val_tag}", val / math.log(2), step)
        for name, p in model.named_parameters():
            self.histogram(f"params/{name}", p.detach(), step)
            if p.grad is not None:
                self.histogram(f"grads/{name}", p.grad.detach(), step)

    def histogram(self, tag, values, step):
        """TensorBoard's histogram of a tensor, left out when it holds a NaN or Inf: TensorBoard cannot
        bin those, and raises (a diverged run is reported by the trainer, not by a traceback here).
        TensorBoard's own bins end at 1e20, and it raises when every value is past them: larger values
        get HUGE_BINS equal bins, in float64, where their range cannot overflow."""
        values = values.double().cpu()
        if not values.numel() or not bool(values.isfinite().all()):
            return
        bins = "tensorflow" if float(values.abs().max()) < self.writer.default_bins[-1] else HUGE_BINS
        self.writer.add_histogram(tag, values, step, bins=bins)

    @_guarded
    def dynamic(self, step, val_dynamic, val):
        self.writer.add_scalar("loss/val_dynamic", val_dynamic, step)
        self.console(f"dynamic evaluation at step {step}: loss/val_dynamic {val_dynamic:.4f} "
                     f"(bpc {val_dynamic / math.log(2):.4f}), against loss/val {val:.4f}: {val - val_dynamic:+.4f}")

    @_guarded
    def hidden_heatmap(self, step, image):
        self.writer.add_image("hidden/units_by_time", image, step, dataformats="CHW")

    @_guarded
    def gradients_through_time(self, step, image, scalars):
        """insight/gradients.py's curve (an image) and its few numbers, at an evaluation."""
        self.writer.add_image("gradients/norm_by_distance", image, step, dataformats="CHW")
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)

    @_guarded
    def char_embedding(self, step, matrix, labels):
        if bool(matrix.isfinite().all()):  # the projector's PCA of a NaN would be NaN throughout
            self.writer.add_embedding(matrix, metadata=labels, tag="char_embedding", global_step=step)

    def validation_line(self, step, val, best, improved):
        what = self.val_tag.replace("_", " ")  # val, or val cloze
        self.console(f"step {step:6d} | {what} loss {val:.4f} | {what} bpc {val / math.log(2):.4f} | best {best:.4f}"
                     f"{' (saved best.pt)' if improved else ''}")

    @_guarded
    def sample(self, text, step):
        self.writer.add_text("samples", "```\n" + text + "\n```", step)

    @_guarded
    def flush(self):
        self.writer.flush()

    @_guarded
    def hparams(self, flat, val):
        """flat: the config's values by dotted key, against the run's final validation loss."""
        from torch.utils.tensorboard.summary import hparams

        # HPARAMS takes numbers, strings and booleans: a list (data.path's files) as one string.
        flat = {k: ", ".join(v) if isinstance(v, list) else v for k, v in flat.items()}
        # Into this run's own event file, so the HPARAMS tab links the config to this run's
        # loss/val and bpc/val. The public add_hparams would write a separate run in a
        # subdirectory (or, given run_name=".", add a second loss/val point at step 0 to this
        # one), so the three summaries go through the writer's file writer directly.
        file_writer = self.writer._get_file_writer()
        for summary in hparams(flat, {f"loss/{self.val_tag}": val, f"bpc/{self.val_tag}": val / math.log(2)}):
            file_writer.add_summary(summary)

    def close(self):
        try:
            self._close()
        finally:
            self.quiet_threads.remove()

    @_guarded
    def _close(self):
        self.bar.close()
        self.writer.close()  # flushes first

    def close_quietly(self):
        """Close after the run failed: a second error must not hide the first."""
        try:
            self.close()
        except RunFailed:
            pass


class NullLogger:
    """What ranks other than 0 log: nothing."""

    def __getattr__(self, name):
        return _nothing


def _nothing(*args, **kwargs):
    return None
