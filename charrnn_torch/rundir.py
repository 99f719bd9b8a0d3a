"""The run directory: a fresh one for a new run, never an earlier run's, and checked writable
before anything is written."""
from pathlib import Path

from .distributed import broadcast_path
from .errors import UserError
from .files import TEMP_SUFFIX


def holds_run(path):
    """Whether path holds a run that can be continued: a checkpoint. A run that ended before its
    first one (killed, diverged, a full disk) leaves only config.yaml and its TensorBoard events:
    nothing to resume, so nothing to protect from the next run, which starts there. Its events stay
    (TensorBoard reads the new run's steps as superseding them); cleaning up instead on failure
    could never cover a run killed with SIGKILL, and would delete the record of why it failed."""
    return path.is_dir() and any((path / n).exists() for n in ("ckpt.pt", "best.pt"))


def choose_out_dir(out_dir, explicit, force):
    """A fresh directory for a new run; never an earlier run's.

    Left at the config's value, an occupied out_dir gives way to a numbered
    sibling (runs/x-2, runs/x-3, ...). Named explicitly, it is refused unless --force.
    """
    path = Path(out_dir)
    if path.exists() and not path.is_dir():
        raise UserError(f"out_dir {path} is a file, not a directory")
    if holds_run(path):
        if force:
            for f in list(path.glob("events.out.tfevents.*")) + [path / n for n in ("ckpt.pt", "best.pt")]:
                if f.exists():
                    f.unlink()
        elif explicit:
            raise UserError(f"out_dir {path} already holds a run; continue it with --resume {path}, "
                            f"or start over in it with --force")
        else:
            n = 2
            while holds_run(path.with_name(f"{path.name}-{n}")) or path.with_name(f"{path.name}-{n}").is_file():
                n += 1
            path = path.with_name(f"{path.name}-{n}")
    check_writable(path)
    return path


def check_writable(path):
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"out_dir {path} is not writable ({e.strerror})") from None


def prepare_out_dir(cfg, explicit, force, resume_dir, dist_info):
    """Rank 0 picks (and checks) the directory; every rank gets its choice."""
    if dist_info.is_main:
        out_dir = Path(resume_dir) if resume_dir is not None else choose_out_dir(cfg.out_dir, explicit, force)
        check_writable(out_dir)
        for stale in out_dir.glob(f".*{TEMP_SUFFIX}"):
            stale.unlink()  # left by a process killed mid-write; the real file is intact
    else:
        out_dir = Path(resume_dir or cfg.out_dir)
    return broadcast_path(out_dir, dist_info)
