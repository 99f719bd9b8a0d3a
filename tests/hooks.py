"""Test-only faults for training runs, kept out of the package: a Trainer subclass that turns
chosen steps' losses into NaN and sends itself SIGINT after a chosen step, and a launcher
(`python tests/hooks.py HOOKS_JSON TRAIN_ARGS...`) that runs the real training command with
them, optionally pausing every write of ckpt.pt just before its rename (so a test can kill the
process mid-write) or failing the writes of one file as a full disk would, and reporting the gloo
threads still alive once the command has returned."""
import errno
import functools
import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from charrnn_torch.errors import tell  # noqa: E402
from charrnn_torch.training import checkpoint, trainer  # noqa: E402
from charrnn_torch.training.config import build_config  # noqa: E402


class HookedTrainer(trainer.Trainer):
    def __init__(self, cfg, *, nan_steps=(), interrupt_at=0, **kwargs):
        self.nan_steps, self.interrupt_at = set(nan_steps), interrupt_at
        super().__init__(cfg, **kwargs)

    def train_step(self, x, y):
        real = self.step_fn.forward
        if self.state.step + 1 in self.nan_steps:  # this step's logits, and so its loss, are NaN
            self.step_fn.forward = lambda x, h: (lambda out: (out[0] * float("nan"), out[1]))(real(x, h))
        try:
            out = super().train_step(x, y)
        finally:
            self.step_fn.forward = real
        if self.interrupt_at and self.state.step + 1 == self.interrupt_at:
            os.kill(os.getpid(), signal.SIGINT)
        return out


def hooked_train(cfg, nan_steps=(), interrupt_at=0, **kwargs):
    return HookedTrainer(cfg, nan_steps=nan_steps, interrupt_at=interrupt_at, **kwargs).run()


def interrupted_and_resumed(cfg, interrupt_at, **kwargs):
    """cfg's run, in this process, stopped by a Ctrl-C after step interrupt_at and then resumed from
    the checkpoint it wrote in cfg.out_dir, as `train --resume` would: the resumed run's summary."""
    try:
        hooked_train(cfg, interrupt_at=interrupt_at, **kwargs)
    except trainer.Interrupted:
        pass
    else:
        raise AssertionError(f"the run was not interrupted at step {interrupt_at}")
    ck = checkpoint.load(Path(cfg.out_dir) / "ckpt.pt")
    assert ck["step"] == interrupt_at, ck["step"]
    return trainer.train(build_config(ck["config"]), resume=ck, resume_dir=Path(cfg.out_dir), **kwargs)


def pause_before_replacing(name, seconds):
    """Every os.replace onto a file called `name` first waits `seconds`: the temp file is
    complete and fsynced, the real one not yet replaced."""
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst).name == name:
            time.sleep(seconds)
        return real_replace(src, dst, *args, **kwargs)

    os.replace = replace


def fail_replacing(name):
    """Every os.replace onto a file called `name` fails as on a full disk."""
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst).name == name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst, *args, **kwargs)

    os.replace = replace


def main(argv):
    hooks = json.loads(argv[0])
    if hooks.get("pause_ckpt_write"):
        pause_before_replacing("ckpt.pt", hooks["pause_ckpt_write"])
    if hooks.get("fail_write"):
        fail_replacing(hooks["fail_write"])
    trainer.Trainer = functools.partial(HookedTrainer, nan_steps=hooks.get("nan_steps", ()),
                                        interrupt_at=hooks.get("interrupt_at", 0))
    from charrnn_torch.cli import run
    code = run("train", argv[1:], "python scripts/train.py")
    if hooks.get("report_threads"):  # after the run, as the interpreter is about to finalize
        tell(f"gloo threads left: {len(gloo_threads())}")  # one write: the ranks share this stderr
    return code


def gloo_threads():
    """This process's threads that belong to a gloo process group (named by gloo and torch)."""
    names = [Path(f"/proc/self/task/{t}/comm").read_text().strip() for t in os.listdir("/proc/self/task")]
    return [n for n in names if "gloo" in n]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
