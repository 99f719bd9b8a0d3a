"""Proves the built-in corpus data.path=python-stdlib (code_corpus.py) on a fake standard library
in a temporary folder: the .py files outside site-packages, dist-packages and the test suites,
sorted by path, each followed by a newline (data.separator); files that are not UTF-8 skipped and
counted (kept with data.vocab=bytes); the list of files hashed; the cap cut at
data.stdlib_max_bytes on a whole character, with nothing read after it; the text written once to
$XDG_CACHE_HOME and reused, rebuilt when a file is added, for another cap or another Python; a
run records what
it was built from (log line, config.yaml comment, checkpoint, the visualizer's header) and refuses
to resume, or to show its validation split, on another Python's corpus; ./python-stdlib is a file;
bad input (a cap that is not a positive size, no standard library) is one error line, exit 2,
nothing written; a cap too small for the run is refused leaving no text or record in the cache
(the run removes what it built); and configs/python_code.yaml trains from the real standard library with no
corpus downloaded.

Run: pytest tests/test_code_corpus.py
"""
import hashlib
import json
import os
import sysconfig
from pathlib import Path

import pytest
import torch
import yaml

from charrnn_torch.data import code_corpus
from charrnn_torch.cli import main
from charrnn_torch.training.config import build_config
from charrnn_torch.data.corpus import corpus_source, load_corpus
from conftest import run_script

FILES = {  # relative path -> content; the excluded ones say so
    "b.py": "b = 2\n",
    "a.py": "a = 1",  # no final newline: the separator gives it one
    "pkg.py": "pkg = 'module'\n",
    "pkg/__init__.py": "",
    "pkg/z.py": "def z():\n    return (1, [2])\n",
    "pkg_b.py": "x = {}\n",
    "Upper.py": "U = 0\n",
    "idlelib/ok.py": "ok = True\n",
    "notes.txt": "not python\n",
    "site-packages/excluded.py": "EXCLUDED\n",
    "dist-packages/excluded.py": "EXCLUDED\n",
    "test/excluded.py": "EXCLUDED\n",
    "pkg/tests/excluded.py": "EXCLUDED\n",
    "idlelib/idle_test/excluded.py": "EXCLUDED\n",
}
# sorted by path: uppercase first, "." < "/" < "_"
ORDER = ["Upper.py", "a.py", "b.py", "idlelib/ok.py", "pkg.py", "pkg/__init__.py", "pkg/z.py", "pkg_b.py"]
EXPECTED = "".join(FILES[name] + "\n" for name in ORDER)
# files_corpus's list hash, written out: each file used, relative to the library, and its size
LIST_SHA256 = hashlib.sha256("".join(f"{n}\t{len(FILES[n].encode())}\n" for n in ORDER).encode()).hexdigest()


def write_tree(root, files):
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return root


@pytest.fixture
def stdlib(tmp_path, monkeypatch):
    """A fake standard library as sysconfig's, and a private cache folder."""
    root = write_tree(tmp_path / "lib" / "python3.x", FILES)
    monkeypatch.setattr(sysconfig, "get_paths", lambda *a, **k: {"stdlib": str(root)})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return root


def build(max_bytes=10**6, **kw):
    lines = []
    path, record = code_corpus.ensure(max_bytes, log=lines.append, **kw)
    return path, record, lines


def test_sorted_files_outside_the_exclusions_each_with_a_newline(stdlib, tmp_path):
    path, record, lines = build()
    assert path.read_text() == EXPECTED
    assert path.parent == tmp_path / "cache" / "charrnn_torch"
    assert record == {"name": "python-stdlib", "python": code_corpus.interpreter(), "stdlib": str(stdlib),
                      "max_bytes": 10**6, "separator": "\n", "files": len(ORDER), "skipped": 0, "skipped_by": {},
                      "bytes": len(EXPECTED.encode()), "list_sha256": LIST_SHA256}
    assert lines == [f"corpus: {code_corpus.describe(record)}; written to {path}"]


def test_files_that_are_not_utf8_are_skipped_and_counted(stdlib):
    write_tree(stdlib, {"latin1.py": b"caf\xe9 = 1\n", "pkg/bad.py": b"\xff\xfe\n"})
    path, record, _ = build()
    assert path.read_text() == EXPECTED
    assert (record["files"], record["skipped"], record["list_sha256"]) == (len(ORDER), 2, LIST_SHA256)
    assert "2 skipped (2 not valid UTF-8)" in code_corpus.describe(record)
    path, record, _ = build(mode="bytes")  # bytes mode reads every file: UTF-8 or not
    assert (record["files"], record["skipped"]) == (len(ORDER) + 2, 0)
    assert b"caf\xe9 = 1\n\n" in path.read_bytes()


def test_another_separator_parts_the_files(stdlib):
    path, record, _ = build(separator="\n# ---\n")
    assert path.read_text() == "".join(FILES[name] + "\n# ---\n" for name in ORDER)
    assert record["separator"] == "\n# ---\n" and record["list_sha256"] == LIST_SHA256


def test_the_cap_cuts_on_a_whole_character_and_reads_nothing_after(stdlib):
    write_tree(stdlib, {"a.py": "a = 'é'\n", "zz_bad.py": b"\xff"})  # after the cut: never read, not counted
    head = "U = 0\n\n" + "a = '"  # the cap falls inside é's two bytes
    path, record, _ = build(len(head.encode()) + 1)
    assert path.read_text() == head
    assert (record["files"], record["skipped"], record["bytes"]) == (2, 0, len(head.encode()))
    exact = "U = 0\n\n" + "a = 'é'\n\n"  # a cap on a file's end: that file whole, the next not begun
    path, record, _ = build(len(exact.encode()))
    assert path.read_text() == exact and record["files"] == 2


def test_built_once_reused_then_rebuilt_for_a_new_file_another_cap_or_python(stdlib, monkeypatch):
    first, record, _ = build()
    again, record_again, lines = build()
    assert again == first and record_again == record and again.read_text() == EXPECTED
    assert lines == [f"corpus: {code_corpus.describe(record)}; read from {first}"]
    write_tree(stdlib, {"a_new.py": "new = 1\n"})  # the listing changed: the text is rebuilt in its place
    again, record_again, lines = build()
    assert again == first and again.read_text().startswith("U = 0\n\na = 1\nnew = 1\n\n")
    assert record_again["files"] == len(ORDER) + 1 and record_again["list_sha256"] != LIST_SHA256
    assert lines == [f"corpus: {code_corpus.describe(record_again)}; written to {first}"]
    capped, capped_record, _ = build(7)
    assert capped != first and capped.read_text() == "U = 0\n\n" and capped_record["max_bytes"] == 7
    assert first.read_text().startswith("U = 0\n\na = 1\nnew") # the other cap's text is left alone
    monkeypatch.setattr(code_corpus.platform, "python_version", lambda: "3.99.0")
    other, other_record, _ = build()
    assert other != first and other_record["python"].endswith(" 3.99.0")
    assert other.read_text().startswith("U = 0\n\na = 1\nnew = 1\n\n")


def test_a_text_and_its_record_that_disagree_are_rebuilt(stdlib):
    path, record, _ = build()
    path.write_text("damaged")
    again, _, lines = build()
    assert again.read_text() == EXPECTED and "written to" in lines[0]


def test_only_the_exact_name_is_the_built_in_corpus(stdlib, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "python-stdlib").write_text("my own file\n")
    cfg = build_config({}, ["data.path=./python-stdlib"]).data
    assert corpus_source(cfg, progress=False) == (Path("python-stdlib"), None)
    path, record = corpus_source(build_config({}, ["data.path=python-stdlib"]).data, log=lambda *a: None)
    assert path.read_text() == EXPECTED and record["files"] == len(ORDER)


def tiny_run(out, *extra):
    return ["train", "data.path=python-stdlib", f"out_dir={out}", "device=cpu", "--no-progress",
            "model.hidden_size=8", "model.cell=gru", "train.batch_size=2", "train.seq_len=8", "train.max_steps=4",
            "train.eval_interval=4", "train.sample_interval=0", "data.val_fraction=0.2", *extra]


@pytest.mark.slow
def test_the_run_records_its_corpus_and_refuses_another_pythons(stdlib, tmp_path, monkeypatch, capsys):
    write_tree(stdlib, {f"gen/m{i}.py": f"def f{i}(x):\n    return (x, [{i}])  # {i}\n" * 4 for i in range(20)})
    out = tmp_path / "run"
    assert main(tiny_run(out)) == 0
    record = json.loads(next((tmp_path / "cache" / "charrnn_torch").glob("*.json")).read_text())
    del record["listing"]  # the cache's own key (paths, sizes and times), not the run's record
    line = f"corpus: {code_corpus.describe(record)}"
    assert line in capsys.readouterr().out
    text = (out / "config.yaml").read_text()
    assert text.endswith(f"# data.path: {code_corpus.describe(record)}\n")
    assert yaml.safe_load(text)["data"]["stdlib_max_bytes"] == 5_000_000
    assert torch.load(out / "ckpt.pt", weights_only=True)["data_source"] == record
    assert main(["visualize", "--checkpoint", str(out), "--out", str(tmp_path / "viz")]) == 0
    header = json.loads((tmp_path / "viz" / "insight.json").read_text())["header"]
    assert header["corpus"] == code_corpus.describe(record) and "python-stdlib" in header["source"]
    assert main(["train", "--resume", str(out), "train.max_steps=5", "--no-progress"]) == 0
    capsys.readouterr()
    monkeypatch.setattr(code_corpus.platform, "python_version", lambda: "3.99.0")
    for argv in (["train", "--resume", str(out), "train.max_steps=6", "--no-progress"],
                 ["visualize", "--checkpoint", str(out), "--out", str(tmp_path / "viz2")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: cannot ") and err.count("\n") == 1 and "3.99.0" in err, err
    assert torch.load(out / "ckpt.pt", weights_only=True)["step"] == 5 and not (tmp_path / "viz2").exists()


@pytest.mark.parametrize("value,needle", [
    ("0", "data.stdlib_max_bytes: must be a positive number of bytes, got 0"),
    ("-5", "data.stdlib_max_bytes: must be a positive number of bytes, got -5"),
    ("5MB", "data.stdlib_max_bytes: expected an integer, got '5MB'"),
    ("2.5e+6", "data.stdlib_max_bytes: expected an integer, got 2500000.0"),
])
def test_a_cap_that_is_not_a_positive_size_is_one_error_line(stdlib, tmp_path, capsys, value, needle):
    out = tmp_path / "run"
    assert main(tiny_run(out, f"data.stdlib_max_bytes={value}")) == 2
    err = capsys.readouterr().err
    assert err == f"error: {needle}\n"
    assert not out.exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("cap", [1, 10])
def test_a_cap_too_small_for_the_run_is_refused_and_leaves_no_corpus_behind(stdlib, tmp_path, capsys, cap):
    out = tmp_path / "run"
    assert main(tiny_run(out, f"data.stdlib_max_bytes={cap}")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: training text is too short") and err.count("\n") == 1, err
    assert not out.exists() and not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    if cap == 10:  # and for a run it fits, the same cap's corpus is built and kept: text, record, ids
        assert main(tiny_run(out, f"data.stdlib_max_bytes={cap}", "train.batch_size=1", "train.seq_len=4")) == 0
        assert len([p for p in (tmp_path / "cache").rglob("*") if p.is_file()]) == 3


@pytest.mark.parametrize("case", ["no-key", "missing-dir", "a-zip", "no-py-files"])
def test_no_standard_library_is_one_error_line_naming_what_was_looked_for(tmp_path, monkeypatch, capsys, case):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    where = {"no-key": None, "missing-dir": tmp_path / "lib" / "python3.x", "a-zip": tmp_path / "python311.zip",
             "no-py-files": tmp_path / "empty"}[case]
    if case == "a-zip":
        where.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    if case == "no-py-files":
        write_tree(where, {"README.txt": "no code\n", "test/t.py": "x = 1\n"})
    monkeypatch.setattr(sysconfig, "get_paths", lambda *a, **k: {} if where is None else {"stdlib": str(where)})
    out = tmp_path / "run"
    assert main(tiny_run(out)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: data.path=python-stdlib: ") and err.count("\n") == 1, err
    assert f"{where}" in err and "sysconfig.get_paths()['stdlib']" in err and "Traceback" not in err
    assert ("no .py files under" if case == "no-py-files" else "has no standard library directory") in err
    assert not out.exists() and not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_python_code_config_trains_with_no_corpus_downloaded(tmp_path, monkeypatch):
    """The shipped config, from a folder with no data/, on this interpreter's real standard library."""
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    monkeypatch.setenv("XDG_CACHE_HOME", env["XDG_CACHE_HOME"])
    r = run_script("train.py", "--config", "python_code.yaml", "--no-progress", "model.hidden_size=16",
                   "train.max_steps=3", "train.eval_interval=3", "train.batch_size=4", "train.seq_len=16",
                   "data.stdlib_max_bytes=200000", f"out_dir={tmp_path / 'run'}", "device=cpu", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert "corpus: python-stdlib, the .py files of" in r.stdout and "done: 3 steps" in r.stdout
    assert sorted(os.listdir(tmp_path)) == ["cache", "run"]  # nothing fetched into ./data
    ck = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)
    assert ck["config"]["model"]["cell"] == "gru" and ck["config"]["data"]["path"] == "python-stdlib"
    assert 200_000 - 4 < ck["data_source"]["bytes"] <= 200_000  # cut on a whole character
    lines = []
    corpus = load_corpus(build_config(ck["config"]).data, progress=False, log=lines.append)
    assert corpus.source_info == ck["data_source"] and "read from" in lines[0]  # this process reuses the text
