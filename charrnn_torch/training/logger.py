"""Everything a run shows: TensorBoard scalars, text, histograms and hparams, the tqdm bar, and
the console lines. Rank 0 gets a RunLogger; other ranks a NullLogger that does nothing, so the
training loop never asks which rank it is on before logging.

loss/* are nats per symbol: per character, per byte (data.vocab=bytes) or per token (words, bpe).
bpc/* are bits per character of text for every vocabulary, so runs on different ones compare: for
chars and bytes (whose character is the byte) the loss in bits; for a token model its nats over
the characters its tokens spell (bpc/train over its training split's characters per token, bpc/val
over the very characters scored). throughput/chars_per_sec counts characters of text likewise."""
import functools
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


PROJECTOR_DIR = "projector"  # in a run directory: TensorBoard projector's files, one folder per step


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

    def __init__(self, out_dir, config_yaml, train_cfg, start_step, resumed, progress, console, cloze=False,
                 start_seconds=0.0):
        self.out_dir, self.console, self.progress = out_dir, console, progress
        self.bar_counts = BarCounts(train_cfg)
        # A bidirectional model's validation loss sees both sides of each character: not a language
        # model's loss/val, so it is never logged under that name.
        self.val_tag = "val_cloze" if cloze else "val"
        self.quiet_threads = QuietWriterThreads()
        self.open(config_yaml, start_step, resumed, start_seconds)

    @_guarded
    def open(self, config_yaml, start_step, resumed, start_seconds):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events a killed run logged after its last checkpoint,
        # so the resumed steps follow on with no duplicates.
        self.writer = SummaryWriter(str(self.out_dir), purge_step=start_step + 1 if resumed else None)
        self.writer.add_text("config", "```yaml\n" + config_yaml + "```", start_step)
        self.bar = self.bar_counts.bar(start_step, start_seconds, self.progress)

    def line(self, text):
        self.console(text)

    def step_done(self, step, train_seconds):
        self.bar_counts.update(self.bar, step, train_seconds)

    def eval_progress(self, windows, total):
        """The validation windows, counted by a bar of their own that goes when the pass ends."""
        from tqdm import tqdm

        return tqdm(windows, total=total, desc="evaluate", unit="window", leave=False, dynamic_ncols=True,
                    disable=not self.progress)

    @_guarded
    def train_scalars(self, step, loss, smooth, lr, grad_norm, chars_per_sec, bpc, clipped=None):
        """clipped: the fraction of steps since the last log whose gradient norm was clipped."""
        for tag, value in (("loss/train", loss), ("loss/train_smooth", smooth), ("bpc/train", bpc),
                           ("lr", lr), ("grad_norm", grad_norm), ("throughput/chars_per_sec", chars_per_sec)):
            self.writer.add_scalar(tag, value, step)
        if clipped is not None:
            self.writer.add_scalar("grad_clipped_fraction", clipped, step)
        self.bar.set_postfix({**self.bar_counts.postfix(step), "loss": f"{loss:.3f}", "chars/s": f"{chars_per_sec:,.0f}"})

    @_guarded
    def nonfinite(self, step, total):
        self.writer.add_scalar("train/nonfinite_steps", total, step)

    @_guarded
    def validation(self, step, val, bpc, model, train_seconds):
        self.writer.add_scalar(f"loss/{self.val_tag}", val, step)
        # Training time, not wall-clock: a resumed run's pause and its evaluations do not count.
        self.writer.add_scalar("time/train_minutes", train_seconds / 60, step)
        self.writer.add_scalar(f"bpc/{self.val_tag}", bpc, step)
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
    def dynamic(self, step, val_dynamic, val, bpc):
        self.writer.add_scalar("loss/val_dynamic", val_dynamic, step)
        self.console(f"dynamic evaluation at step {step}: loss/val_dynamic {val_dynamic:.4f} "
                     f"(bpc {bpc:.4f}), against loss/val {val:.4f}: {val - val_dynamic:+.4f}")

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
        from torch.utils.tensorboard import SummaryWriter

        if not bool(matrix.isfinite().all()):  # the projector's PCA of a NaN would be NaN throughout
            return
        # The projector writes a folder per step (00200/char_embedding/...) into its writer's log
        # directory: a writer of its own keeps them all under the run's projector/.
        with SummaryWriter(str(self.out_dir / PROJECTOR_DIR)) as writer:
            writer.add_embedding(matrix, metadata=labels, tag="char_embedding", global_step=step)

    def validation_line(self, step, val, bpc, best, improved):
        what = self.val_tag.replace("_", " ")  # val, or val cloze
        self.console(f"step {step:6d} | {what} loss {val:.4f} | {what} bpc {bpc:.4f} | best {best:.4f}"
                     f"{' (saved best.pt)' if improved else ''}")

    @_guarded
    def sample(self, text, step):
        self.writer.add_text("samples", "```\n" + text + "\n```", step)

    @_guarded
    def flush(self):
        self.writer.flush()

    @_guarded
    def hparams(self, flat, val, bpc):
        """flat: the config's values by dotted key, against the run's final validation loss."""
        from torch.utils.tensorboard.summary import hparams

        # HPARAMS takes numbers, strings and booleans: a list (data.path's files) as one string.
        flat = {k: ", ".join(v) if isinstance(v, list) else v for k, v in flat.items()}
        # Into this run's own event file, so the HPARAMS tab links the config to this run's
        # loss/val and bpc/val. The public add_hparams would write a separate run in a
        # subdirectory (or, given run_name=".", add a second loss/val point at step 0 to this
        # one), so the three summaries go through the writer's file writer directly.
        file_writer = self.writer._get_file_writer()
        for summary in hparams(flat, {f"loss/{self.val_tag}": val, f"bpc/{self.val_tag}": bpc}):
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


class BarCounts:
    """What the training bar counts. A run with a training-time budget (train.max_minutes) counts
    the budget's seconds, so that its total and ETA say when the run will end: such a config's
    max_steps is a ceiling (a million) that a bar of steps would show as hundreds of hours. The
    bar moves by whichever of the budget and the steps is further along, as the cosine's progress
    does (trainer.lr_factor), so it fills when either ends the run; the step goes in the postfix.
    A run without a budget counts steps."""

    def __init__(self, train_cfg):
        self.max_steps, self.budget = train_cfg.max_steps, 60 * train_cfg.max_minutes

    def position(self, step, train_seconds):
        if not self.budget:
            return step
        return min(self.budget, max(train_seconds, self.budget * step / self.max_steps))

    def bar(self, start_step, start_seconds, progress):
        from tqdm import tqdm

        if not self.budget:
            return tqdm(total=self.max_steps, initial=start_step, disable=not progress, dynamic_ncols=True,
                        desc="train", unit="step")
        return tqdm(total=self.budget, initial=self.position(start_step, start_seconds), disable=not progress,
                    dynamic_ncols=True, desc="train", unit="s",
                    bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s of training "
                               "[{elapsed}<{remaining}{postfix}]")

    def update(self, bar, step, train_seconds):
        bar.update(self.position(step, train_seconds) - bar.n)

    def postfix(self, step):
        return {"step": step} if self.budget else {}


class NullLogger:
    """What ranks other than 0 log: nothing."""

    def __getattr__(self, name):
        return _nothing

    def eval_progress(self, windows, total):
        return windows


def _nothing(*args, **kwargs):
    return None
