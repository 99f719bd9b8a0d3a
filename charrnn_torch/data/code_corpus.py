"""The built-in corpus ``data.path: python-stdlib``: Python source code, from the standard library
of the interpreter that runs the training, so it needs no download. It is a set of files like any
folder given as data.path, read, joined, skipped, cached and recorded by files_corpus.py's rules;
what is its own:

- the files: the ``.py`` files under ``sysconfig.get_paths()["stdlib"]``, leaving out every
  directory named in ``EXCLUDED_DIRS`` (installed packages and the test suites), each recorded by
  its path relative to the standard library;
- the cap: cut at ``data.stdlib_max_bytes`` bytes, so the last file used may end mid-file (at a
  whole character) and files after the cut are not read;
- its record also names the Python version, the standard library and the cap.

A real file called ``python-stdlib`` is written ``./python-stdlib``.
"""
import json
import os
import platform
import sysconfig
from pathlib import Path

from . import files_corpus
from ..errors import UserError

NAME = "python-stdlib"
DEFAULT_MAX_BYTES = 5_000_000  # about 40% of CPython 3.11's standard library without its tests
# Installed packages are not the standard library; the test suites are left out so the text is
# the library's own code (idle_test is IDLE's test suite, inside idlelib).
EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})
RULES = 1  # bumped when the rule above changes, so that a text built by the old rule is not reused


def is_builtin(path):
    """True for the reserved name python-stdlib (exactly: ./python-stdlib is a file)."""
    return str(path) == NAME


def interpreter():
    return f"{platform.python_implementation()} {platform.python_version()}"


def stdlib_dir():
    """The running interpreter's standard library directory; an error that names what was looked for
    when there is none (an embedded Python keeps it in a zip file, or not at all)."""
    path = sysconfig.get_paths().get("stdlib")
    if not path or not os.path.isdir(path):
        raise UserError(f"data.path={NAME}: this Python ({interpreter()}) has no standard library directory: "
                        f"looked for sysconfig.get_paths()['stdlib'] = {path}; give data.path a text file instead")
    return Path(path)


def source_files(root):
    """The .py files under root, outside EXCLUDED_DIRS, sorted by their path relative to root."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in EXCLUDED_DIRS]
        found += [Path(dirpath, name) for name in filenames if name.endswith(".py")]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def cached_names(root, max_bytes, mode, separator):
    """(the text file, its JSON record) in the user's cache folder, for this interpreter, root, cap,
    vocabulary mode and separator."""
    stem = f"{NAME}-{platform.python_implementation().lower()}-{platform.python_version()}-{max_bytes}"
    return files_corpus.cached_names(stem, json.dumps([RULES, str(root), mode, separator]))


def ensure(max_bytes, log=print, mode="chars", separator="\n", written=None):
    """(the corpus text file, its record): built on first use and when a file of the library
    changes (files_corpus.ensure_text), else read from the cache folder. written: a list that gets
    the text's and the record's paths when this call writes them (for a run that removes them
    again if it is refused, data.Corpus.discard)."""
    root = stdlib_dir()
    paths = source_files(root)
    if not paths:
        raise UserError(f"data.path={NAME}: no .py files under {root} (sysconfig.get_paths()['stdlib']); "
                        f"give data.path a text file instead")
    base = {"name": NAME, "python": interpreter(), "stdlib": str(root), "max_bytes": max_bytes}
    names = cached_names(root, max_bytes, mode, separator)
    text_path, record, built = files_corpus.ensure_text(paths, names, base, mode, separator, f"data.path={NAME}",
                                                        max_bytes, root)
    if built and written is not None:
        written += list(names)
    log(f"corpus: {describe(record)}; {'written to' if built else 'read from'} {text_path}")
    return text_path, record


def describe(record):
    """One line for a record: the run's log, its config.yaml and the visualizer's page header."""
    cap = f" (cap {record['max_bytes']:,})"
    return (f"{record['name']}, the .py files of {record['python']}'s standard library ({record['stdlib']}): "
            f"{files_corpus.counts(record, cap)}")
