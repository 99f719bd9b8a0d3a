"""Proves the corpus and its cache hold up against other users, odd files and crashes:

- a cache is readable by whoever can read its source (a shared, group-writable folder), and a
  cache that cannot be read (another user's, private to them) is left as it is while the run
  builds and uses its own, in the user's cache folder, saying so in one line;
- with no writable place at all (read-only folders, a read-only filesystem) the run encodes the
  corpus in memory, says so in one line, and trains on the same ids;
- a corpus that is not a regular file (a named FIFO, a pipe such as bash's <(zcat ...), a device,
  a socket), and any other file read that way (--score, --prime-file, --text, --config,
  --checkpoint, --resume, --init-from), is refused with one `error:` line at once: nothing opens
  it, so nothing hangs;
- a cache whose ids do not fit its vocabulary under an intact header is refused when it is opened,
  before a run directory exists;
- a run that fails before its first checkpoint leaves a folder that does not block the next run,
  while one still running before its first checkpoint is not shared;
- a cache build killed with SIGKILL leaks its temporary file only until the next start, which
  removes it (and leaves a live writer's, and another host's, alone).

The tests that need another user switch this process's effective uid when run as root; run as
anyone else, they deny access with chmod instead.

Run: pytest tests/test_corpus_robustness.py
"""
import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from charrnn_torch.data import cache
from charrnn_torch import files
from charrnn_torch.cli import main
from charrnn_torch.training.config import build_config
from charrnn_torch.data.corpus import load_corpus
from conftest import ROOT, tiny_overrides
from test_reliability import _start_long_run, _wait_for, run_train

OTHER_UID = 54321  # a user with no other files on this machine
TEXT = "the quick brown fox jumps over the lazy dog.\n" * 200


@contextlib.contextmanager
def as_another_user():
    """The block runs as another user: as root, by switching this process's effective uid and gid
    and dropping root's groups (the kernel's permission checks then treat it as that user); as
    anyone else, as is (the caller then takes access away with chmod)."""
    if os.geteuid() != 0:
        yield
        return
    groups = os.getgroups()
    os.setgroups([])
    os.setegid(OTHER_UID)
    os.seteuid(OTHER_UID)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)
        os.setgroups(groups)


@pytest.fixture(scope="module")
def warmed(tmp_path_factory):
    """One run first, as ourselves: another user may not read this Python's installation (under
    root's home), so every module a run imports lazily must be imported before switching."""
    tmp = tmp_path_factory.mktemp("warm")
    (tmp / "c.txt").write_text(TEXT)
    assert main(["train", "--no-progress", *tiny_overrides(tmp / "c.txt", tmp / "r", **{"train.max_steps": 2})]) == 0


@pytest.fixture
def shared(warmed):
    """A folder everyone may write (a shared project folder), and the other user's own cache
    folder. Outside pytest's tmp_path, whose parents only their owner may enter."""
    top = Path(tempfile.mkdtemp(prefix="charrnn-shared-"))
    top.chmod(0o755)
    (top / "data").mkdir(mode=0o777)
    (top / "data").chmod(0o777)
    (top / "home-cache").mkdir()
    (top / "runs").mkdir(mode=0o777)
    (top / "runs").chmod(0o777)
    if os.geteuid() == 0:
        os.chown(top / "home-cache", OTHER_UID, OTHER_UID)
    yield top
    for p in top.rglob("*"):  # what a test made read-only, so that it can go
        if p.is_dir() and not p.is_symlink():
            p.chmod(0o777)
    shutil.rmtree(top)


def quiet(*a, **k):
    return None


def corpus_cfg(path):
    return build_config({}, [f"data.path={path}", "data.val_fraction=0.1"]).data


def mode_of(path):
    return stat.S_IMODE(os.stat(path).st_mode)


# ---------------------------------------------------------------- 1. caches shared between users

@pytest.mark.parametrize("source_mode,cache_mode", [(0o644, 0o644), (0o640, 0o640), (0o600, 0o600), (0o444, 0o644)])
def test_a_cache_is_readable_like_its_source(shared, source_mode, cache_mode, monkeypatch):
    src = shared / "data" / "corpus.txt"
    src.write_text(TEXT)
    src.chmod(source_mode)
    path, header, _ = cache.ensure(src, "chars", progress=False, log=quiet)
    assert path == shared / "data" / "corpus.txt.chars.ids"
    assert mode_of(path) == cache_mode  # mkstemp's private 0o600 would lock the next user out
    if os.geteuid() == 0 and source_mode & 0o004:
        monkeypatch.setenv("XDG_CACHE_HOME", str(shared / "home-cache"))
        said = []
        with as_another_user():
            ids, theirs, _ = cache.load(src, "chars", progress=False, log=said.append)
        assert said == [] and theirs == header  # read where it is: no rebuild, no second copy
        assert not any((shared / "home-cache").iterdir())


def test_an_unreadable_cache_is_left_alone_and_the_users_own_used(shared, monkeypatch, capsys):
    src = shared / "data" / "corpus.txt"
    src.write_text(TEXT)
    src.chmod(0o644)
    theirs, _, _ = cache.ensure(src, "chars", progress=False, log=quiet)
    want = torch.from_numpy(np.array(cache.open_ids(theirs, cache.read_header(theirs))))
    theirs.chmod(0o600 if os.geteuid() == 0 else 0o000)  # built by someone else before caches were shared
    before = theirs.read_bytes() if os.geteuid() == 0 else None
    monkeypatch.setenv("XDG_CACHE_HOME", str(shared / "home-cache"))
    ours = cache.cache_places(src, "chars")[1]
    out = shared / "runs" / "r"
    with as_another_user():
        said = []
        corpus = load_corpus(corpus_cfg(src), progress=False, log=said.append)
        assert torch.equal(torch.cat([corpus.train_ids, corpus.val_ids]).long(), want.long())
        assert said[0] == f"cannot read {theirs} (Permission denied): using {ours}", said
        assert said[1].startswith(f"encoded {src} ") and len(said) == 2
        capsys.readouterr()
        code = main(["train", "--no-progress", *tiny_overrides(src, out, **{"train.max_steps": 4})])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"cannot read {theirs} (Permission denied): using {ours}\n" in captured.out  # the user's own, reused
    assert "encoded" not in captured.out and "Traceback" not in captured.err
    if before is not None:
        assert theirs.read_bytes() == before and mode_of(theirs) == 0o600  # left as it was


# ---------------------------------------------------------------- 5. no writable place at all

def _read_only_places(shared, monkeypatch, how):
    """The corpus's folder and the user's cache folder, both impossible to write."""
    src = shared / "data" / "corpus.txt"
    if how == "read-only filesystem":
        if os.geteuid() != 0:
            pytest.skip("mounting a filesystem needs root")
        ro = shared / "ro"
        ro.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(ro)]).returncode:
            pytest.skip("cannot mount a tmpfs here")
        src = ro / "corpus.txt"
        src.write_text(TEXT)
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        monkeypatch.setenv("XDG_CACHE_HOME", str(ro / "cache"))
        return src, contextlib.nullcontext(), lambda: subprocess.run(["umount", str(ro)])
    src.write_text(TEXT)
    (shared / "data").chmod(0o555)
    (shared / "home-cache").chmod(0o555)
    if os.geteuid() == 0:
        os.chown(shared / "home-cache", 0, 0)
    monkeypatch.setenv("XDG_CACHE_HOME", str(shared / "home-cache"))
    return src, as_another_user(), lambda: None


@pytest.mark.parametrize("how", ["permissions", "read-only filesystem"])
def test_no_writable_place_encodes_in_memory(shared, monkeypatch, capsys, how):
    src, who, cleanup = _read_only_places(shared, monkeypatch, how)
    try:
        want = torch.tensor([sorted(set(TEXT)).index(c) for c in TEXT])
        places = cache.cache_places(src, "chars")
        why = "Read-only file system" if how == "read-only filesystem" else "Permission denied"
        notice = (f"no place for the corpus cache of {src} (cannot write {places[0]} ({why}); cannot write "
                  f"{places[1]} ({why})); encoding it in memory for this run")
        out = shared / "runs" / "r"
        with who:
            said = []
            corpus = load_corpus(corpus_cfg(src), progress=False, log=said.append)
            capsys.readouterr()
            code = main(["train", "--no-progress", *tiny_overrides(src, out, **{"train.max_steps": 4})])
        captured = capsys.readouterr()
        assert said == [notice]
        assert torch.equal(torch.cat([corpus.train_ids, corpus.val_ids]).long(), want)
        assert code == 0 and captured.out.startswith(notice + "\n"), captured.err
        assert "Traceback" not in captured.err and (out / "ckpt.pt").exists()
        assert sorted(p.name for p in src.parent.iterdir()) == ["corpus.txt"]  # nothing written, nothing left
    finally:
        cleanup()


# ---------------------------------------------------------------- 2. corpora that are not files

CHILD = r"""
import contextlib, io, json, sys
from charrnn_torch.cli import main
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    print(json.dumps([code, err.getvalue()]), flush=True)
"""


def test_a_corpus_that_is_not_a_regular_file_is_refused_at_once(tmp_path, corpus_file):
    run = tmp_path / "run"
    assert main(["train", "--no-progress", *tiny_overrides(corpus_file, run, **{"train.max_steps": 2})]) == 0
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # no writer ever comes: opening it for reading would wait forever
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    read_end, write_end = os.pipe()  # bash's <(zcat corpus.gz): /dev/fd/N, a pipe whose writer stays open
    pipe = f"/dev/fd/{read_end}"
    hint = "write the stream to a file first"
    data = f"{hint}, e.g. zcat corpus.gz > corpus.txt"
    train = ["train", "--no-progress", *tiny_overrides(corpus_file, tmp_path / "new", **{"train.max_steps": 2})]
    cases = [
        (train + [f"data.path={fifo}"], f"data file {fifo} is not a regular file (a pipe); {data}"),
        (train + [f"data.path={pipe}"], f"data file {pipe} is not a regular file (a pipe); {data}"),
        (train + ["data.path=/dev/null"], f"data file /dev/null is not a regular file (a character device); {data}"),
        (train + [f"data.path={tmp_path / 'sock'}"],
         f"data file {tmp_path / 'sock'} is not a regular file (a socket); {data}"),
        (["sample", "--checkpoint", run, "--score", fifo], f"--score {fifo} is not a regular file (a pipe); {hint}"),
        (["sample", "--checkpoint", run, "--prime-file", pipe], f"--prime-file {pipe} is not a regular file (a pipe)"),
        (["visualize", "--checkpoint", run, "--text", fifo], f"--text {fifo} is not a regular file (a pipe)"),
        (["sample", "--checkpoint", fifo], f"checkpoint {fifo} is not a regular file (a pipe); {hint}"),
        (["train", "--resume", fifo], f"checkpoint {fifo} is not a regular file (a pipe)"),
        (train + ["--init-from", pipe], f"checkpoint {pipe} is not a regular file (a pipe)"),
        (["train", "--config", fifo], f"config file {fifo} is not a regular file (a pipe)"),
    ]
    try:
        child = subprocess.run([sys.executable, "-X", "faulthandler", "-c", CHILD,
                                json.dumps([[str(a) for a in argv] for argv, _ in cases])],
                               capture_output=True, text=True, cwd=tmp_path, timeout=180, pass_fds=(read_end,),
                               env=dict(os.environ, PYTHONPATH=str(ROOT)))
    finally:
        os.close(write_end)
        os.close(read_end)
        sock.close()
    results = [json.loads(line) for line in child.stdout.splitlines()]
    assert len(results) == len(cases), child.stderr[-3000:]
    bad = [f"{argv[:3]}: exit {code}, {err!r}" for (argv, needle), (code, err) in zip(cases, results)
           if not (code == 2 and err.startswith(f"error: {needle}") and err.count("\n") == 1)]
    assert not bad, "\n".join(bad)
    assert not (tmp_path / "new").exists()


# ---------------------------------------------------------------- 4. corrupt ids under an intact header

def test_corrupt_ids_under_an_intact_header_are_refused_when_opened(tmp_path, corpus_file, capsys):
    path, header, _ = cache.ensure(corpus_file, "chars", progress=False, log=quiet)
    raw = bytearray(path.read_bytes())
    raw[header["offset"] + 1000] = 200  # the vocabulary has a few dozen symbols; the header is untouched
    path.write_bytes(bytes(raw))
    for data_path in (corpus_file, path):  # through its source, and named directly
        capsys.readouterr()
        code = main(["train", "--no-progress", *tiny_overrides(data_path, tmp_path / "run", **{"train.max_steps": 4})])
        err = capsys.readouterr().err
        assert code == 2 and err == (f"error: {path} is corrupt: it holds id 200 where its vocabulary has "
                                     f"{len(header['counts'])} symbols; delete {path} to have it rebuilt from its "
                                     f"source\n"), err
    assert path.read_bytes() == bytes(raw) and not (tmp_path / "run").exists()
    path.unlink()  # as the message says: rebuilt, and the run trains
    assert main(["train", "--no-progress", *tiny_overrides(corpus_file, tmp_path / "run", **{"train.max_steps": 4})]) == 0


def test_a_run_that_failed_before_its_first_checkpoint_does_not_block_the_next(tmp_path, corpus_file, capsys):
    out = tmp_path / "r"
    args = tiny_overrides(corpus_file, out, **{"train.max_steps": 6, "train.eval_interval": 6,
                                                "train.max_nonfinite": 2, "train.sample_interval": 0})
    failed = run_train(*args, hooks={"nan_steps": [1, 2]})  # diverges at step 2, before any evaluation
    assert failed.returncode == 1 and "no checkpoint is left" in failed.stderr, failed.stderr
    assert sorted(p.name.split(".")[0] for p in out.iterdir()) == ["config", "events"]
    capsys.readouterr()
    assert main(["train", "--no-progress", *args]) == 0, capsys.readouterr().err  # out_dir given: the same folder
    assert not (tmp_path / "r-2").exists()
    assert main(["train", "--no-progress", *args]) == 2  # now it holds a run, which --resume continues
    assert "already holds a run; continue it with --resume" in capsys.readouterr().err


def test_a_run_still_running_before_its_first_checkpoint_is_not_shared(tmp_path, corpus_file, capsys):
    out = tmp_path / "r"
    proc = _start_long_run(out, corpus_file)  # no checkpoint until it is stopped
    try:
        assert not (out / "ckpt.pt").exists()
        args = ["--no-progress", *tiny_overrides(corpus_file, out, **{"train.max_steps": 2})]
        capsys.readouterr()
        assert main(["train", *args]) == 2
        assert "already holds a run" in capsys.readouterr().err
    finally:
        proc.kill()
        proc.wait()
    assert main(["train", *args]) == 0  # its writer is gone: the folder is free again


# ---------------------------------------------------------------- 6. a build killed with SIGKILL

STALLED_BUILD = r"""
import sys, time
from charrnn_torch.data import cache
encode = cache.encoded_chunks
def stalled(*args):
    for i, ids in enumerate(encode(*args)):
        yield ids
        if i == 3:
            print("stalled", flush=True)
            time.sleep(600)
cache.encoded_chunks = stalled
cache.CHUNK = 1 << 16
cache.ensure(sys.argv[1], "chars", progress=False, log=lambda *a: None)
"""


def test_a_build_killed_with_sigkill_leaks_nothing_past_the_next_start(tmp_path):
    src = tmp_path / "big.txt"
    src.write_text(TEXT * 100)  # 900 KB: the build is stopped a quarter of the way through
    dest = tmp_path / "big.txt.chars.ids"
    child = subprocess.Popen([sys.executable, "-c", STALLED_BUILD, str(src)], stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert child.stdout.readline() == "stalled\n"
        leaked = _wait_for(lambda: [p for p in tmp_path.glob(".big.txt.chars.ids.*.tmp") if p.stat().st_size], "tmp")
        assert leaked[0].name.startswith(f".big.txt.chars.ids.{socket.gethostname()}-{child.pid}.")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert leaked[0].exists() and not dest.exists()  # SIGKILL: the writer could not clean up
    host = socket.gethostname()
    live = tmp_path / f".big.txt.chars.ids.{host}-{os.getpid()}.abcd1234.tmp"  # a run building it right now
    remote = tmp_path / f".big.txt.chars.ids.{host}x-{child.pid}.abcd1234.tmp"  # another host's, on a shared folder
    for p in (live, remote):
        p.write_bytes(b"partial")
    path, header, _ = cache.ensure(src, "chars", progress=False, log=quiet)
    assert path == dest and header["length"] == len(TEXT) * 100
    assert sorted(p.name for p in tmp_path.glob(".*")) == sorted([live.name, remote.name])
    assert files.remove_abandoned(dest) == []  # and neither goes on a second look
