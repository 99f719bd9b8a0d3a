"""The run directory: a fresh one for a new run, never an earlier run's, and checked writable
before anything is written."""
from pathlib import Path

from .distributed import broadcast_path
from ..errors import UserError
from ..files import discard, remove_abandoned_in, temp_file, writer_gone


def holds_run(path):
    """Whether path holds a run: one that can be continued (a checkpoint), or one that may still be
    running (TensorBoard events whose writer is alive, or on another host). A run that ended before
    its first checkpoint (killed, diverged, a full disk) leaves only config.yaml and its events:
    nothing to resume and nobody writing, so the next run starts there, and its events stay
    (TensorBoard reads a restarted run's steps as superseding them). Cleaning up on failure instead
    could not cover a run killed with SIGKILL, and would delete the record of why it failed."""
    if not path.is_dir():
        return False
    if any((path / n).exists() for n in ("ckpt.pt", "best.pt")):
        return True
    return any(not _events_writer_gone(p.name) for p in path.glob("events.out.tfevents.*"))


def _events_writer_gone(name):
    # TensorBoard names a writer's file events.out.tfevents.<time>.<host>.<pid>.<n>
    head, pid, _ = (name.rsplit(".", 2) + ["", ""])[:3]
    return writer_gone(head.split(".", 4)[-1], pid)


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
        with temp_file(path / ".write-test") as (_, probe):
            pass
        discard(probe)
    except OSError as e:
        raise UserError(f"out_dir {path} is not writable ({e.strerror})") from None


def prepare_out_dir(out_dir, explicit, force, resume_dir, dist_info):
    """The run's directory, for the config's out_dir (explicit: given by the user; force: start over
    in it) or a resumed run's resume_dir: rank 0 picks (and checks) it; every rank gets its choice."""
    if dist_info.is_main:
        out_dir = Path(resume_dir) if resume_dir is not None else choose_out_dir(out_dir, explicit, force)
        check_writable(out_dir)
        remove_abandoned_in(out_dir)  # left by a process killed mid-write; the real file is intact
    else:
        out_dir = Path(resume_dir or out_dir)
    return broadcast_path(out_dir, dist_info)
