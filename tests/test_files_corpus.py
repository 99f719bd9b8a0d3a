"""Proves data.path as a set of files (files_corpus.py): a folder (every file under it, hidden ones
left out), a glob (*, **) and a YAML list of files, folders and globs give the files sorted by
path, each followed by data.separator, a file named twice read once; what is not a regular file,
cannot be read, is a corpus cache, or (data.vocab=chars) is not UTF-8 is skipped and counted in
the one corpus line; the joined text is cached in $XDG_CACHE_HOME, keyed by the listing (paths,
sizes, modification times) and rebuilt, with its encoded cache, when a file changes; a run records
the count, the bytes and the list's hash in its log, config.yaml and checkpoint, resumes on the
same files and refuses a changed set; and every bad entry, pattern or value is one `error:` line,
exit 2, nothing written.

Run: pytest tests/test_files_corpus.py
"""
import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from charrnn_torch.cli import main
from charrnn_torch.data import files_corpus
from charrnn_torch.data.corpus import check_same_source, load_corpus
from charrnn_torch.errors import UserError
from charrnn_torch.training.config import build_config
from charrnn_torch.training.trainer import train

LINE = "the quick brown fox jumps over the lazy dog. "
TREE = {  # relative path -> content
    "b.txt": LINE * 3 + "\n",
    "a.txt": LINE * 2,  # no final newline: the separator gives it one
    "sub/c.md": "# notes\n" + LINE * 4 + "\n",
    "sub/deeper/d.txt": LINE + "\n",
    ".hidden.txt": "HIDDEN\n",
    ".git/config": "HIDDEN\n",
}
ORDER = ["a.txt", "b.txt", "sub/c.md", "sub/deeper/d.txt"]  # by path: "." < "/"


def write_tree(root, tree):
    for name, text in tree.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return root


def joined(names, sep="\n", tree=TREE):
    return "".join(tree[n] + sep for n in names)


def list_hash(root_name, names, tree=TREE):
    """files_corpus's list_sha256, written out: each file used, as listed, and its size."""
    return hashlib.sha256("".join(f"{root_name}/{n}\t{len(tree[n].encode())}\n" for n in names).encode()).hexdigest()


@pytest.fixture
def docs(tmp_path, monkeypatch):
    """A folder of files in the working directory, and a private cache folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return write_tree(tmp_path / "docs", TREE)


def ensure(path, **kw):
    lines = []
    text_path, record = files_corpus.ensure(path, log=lines.append, **kw)
    return text_path, record, lines


def test_a_folder_is_every_file_under_it_sorted_with_a_separator_after_each(docs, tmp_path):
    text_path, record, lines = ensure("docs")
    assert text_path.read_text() == joined(ORDER)
    assert text_path.parent == tmp_path / "cache" / "charrnn_torch"
    assert record == {"name": "files", "path": "docs", "separator": "\n", "files": 4, "skipped": 0, "skipped_by": {},
                      "bytes": len(joined(ORDER).encode()), "list_sha256": list_hash("docs", ORDER)}
    assert lines == [f"corpus: the files of docs: 4 files, {record['bytes']:,} bytes, list sha256 "
                     f"{record['list_sha256'][:12]}, 0 skipped; written to {text_path}"]
    again, record_again, lines = ensure("docs")
    assert (again, record_again) == (text_path, record) and lines[0].endswith(f"read from {text_path}")
    other, _, _ = ensure("docs", separator="\n\n----\n")
    assert other != text_path and other.read_text() == joined(ORDER, "\n\n----\n")


@pytest.mark.parametrize("path,names", [
    ("docs/*.txt", ["a.txt", "b.txt"]),
    ("docs/**/*.txt", ["a.txt", "b.txt", "sub/deeper/d.txt"]),  # ** spans folders, and none
    ("docs/s*", ["sub/c.md", "sub/deeper/d.txt"]),  # a matched folder is taken whole
    (["docs/sub", "docs/b.txt", "docs/**/*.md", "docs/a.txt", "docs/b.txt"], ["a.txt", "b.txt", "sub/c.md",
                                                                          "sub/deeper/d.txt"]),
])
def test_globs_and_lists(docs, path, names):
    text_path, record, _ = ensure(path)
    assert text_path.read_text() == joined(names)
    assert (record["files"], record["list_sha256"]) == (len(names), list_hash("docs", names))


def test_odd_files_are_skipped_and_counted_in_the_one_line(docs, monkeypatch):
    write_tree(docs, {"latin1.txt": "caf\xe9\n".encode("latin-1"), "z.txt.chars.ids": b"CHARRNN-IDS\n" + b"\0" * 60,
                      "locked.txt": "secret\n"})
    os.mkfifo(docs / "fifo")  # never opened: a pipe would wait for a writer
    os.symlink(docs / "gone.txt", docs / "dangling.txt")
    read_bytes = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda p: (_ for _ in ()).throw(PermissionError(13, "denied"))
                        if p.name == "locked.txt" else read_bytes(p))
    text_path, record, lines = ensure("docs")
    assert text_path.read_text() == joined(ORDER)
    assert record["skipped_by"] == {"a corpus cache": 1, "not a regular file": 1, "not valid UTF-8": 1,
                                    "unreadable": 2}
    assert len(lines) == 1 and ("5 skipped (1 a corpus cache, 1 not a regular file, 1 not valid UTF-8, "
                                "2 unreadable); written to") in lines[0]
    text_path, record, _ = ensure("docs", mode="bytes")  # bytes mode keeps what is not UTF-8
    assert record["skipped"] == 4 and "caf\xe9\n".encode("latin-1") in text_path.read_bytes()


def test_the_text_is_rebuilt_when_a_file_changes_and_its_record_follows_the_files(docs):
    first, record, _ = ensure("docs")
    corpus = load_corpus(build_config({}, ["data.path=docs"]).data, progress=False, log=lambda *a: None)
    assert corpus.source_info == record
    os.utime(docs / "b.txt", ns=(1, 1))  # the same bytes, another modification time: rebuilt, same record
    again, record_again, lines = ensure("docs")
    assert "written to" in lines[0] and record_again == record
    (docs / "b.txt").write_text("changed\n")
    lines = []
    corpus = load_corpus(build_config({}, ["data.path=docs"]).data, progress=False, log=lines.append)
    changed = {**TREE, "b.txt": "changed\n"}
    assert corpus.vocab.decode(corpus.train_ids.tolist()) + corpus.vocab.decode(corpus.val_ids.tolist()) \
        == joined(ORDER, tree=changed)
    assert "written to" in lines[0] and any(line.startswith("rebuilding ") for line in lines), lines
    assert corpus.source_info["list_sha256"] == list_hash("docs", ORDER, changed) != record["list_sha256"]


TINY = ["device=cpu", "model.hidden_size=8", "train.batch_size=2", "train.seq_len=8", "train.max_steps=4",
        "train.eval_interval=2", "train.sample_interval=0", "data.val_fraction=0.2"]


def tiny_run(path, out, *extra):
    return ["train", f"data.path={path}", f"out_dir={out}", "--no-progress", *TINY, *extra]


def test_a_run_records_its_files_resumes_on_them_and_refuses_a_changed_set(docs, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(tiny_run("[docs/a.txt, docs/sub]", out)) == 0
    record = torch.load(out / "ckpt.pt", weights_only=True)["data_source"]
    assert record["path"] == ["docs/a.txt", "docs/sub"] and record["files"] == 3
    line = f"corpus: {files_corpus.describe(record)}"
    assert line in capsys.readouterr().out
    text = (out / "config.yaml").read_text()
    assert text.endswith(f"# data.path: {files_corpus.describe(record)}\n")
    assert yaml.safe_load(text)["data"]["path"] == ["docs/a.txt", "docs/sub"]
    assert main(["train", "--resume", str(out), "train.max_steps=6", "--no-progress"]) == 0
    capsys.readouterr()
    write_tree(docs, {"sub/new.txt": "a new file\n"})
    assert main(["train", "--resume", str(out), "train.max_steps=8", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot resume: the run was trained on the files of docs/a.txt, docs/sub: 3 files")
    assert "here the corpus is the files of docs/a.txt, docs/sub: 4 files" in err and err.count("\n") == 1
    assert torch.load(out / "ckpt.pt", weights_only=True)["step"] == 6


def test_the_python_api_takes_a_list_in_the_config(docs, tmp_path):
    cfg = build_config({"data": {"path": ["docs/*.txt", "docs/sub/c.md"], "separator": "\n\n"}},
                       [f"out_dir={tmp_path / 'api'}", *TINY])
    summary = train(cfg, progress=False, log=lambda *a: None)
    record = torch.load(Path(summary["out_dir"]) / "best.pt", weights_only=True)["data_source"]
    assert (record["files"], record["separator"]) == (3, "\n\n")


def test_an_old_record_is_compared_on_the_keys_it_has():
    old = {"name": "python-stdlib", "python": "CPython 3.0.1", "stdlib": "/lib", "max_bytes": 9, "files": 2,
           "skipped": 0, "bytes": 9}  # written before file sets: no list hash
    new = {**old, "separator": "\n", "skipped_by": {}, "list_sha256": "ab" * 32}
    check_same_source(old, new, "resume")
    with pytest.raises(UserError, match="cannot resume: the run was trained on python-stdlib"):
        check_same_source(old, {**new, "files": 3}, "resume")
    with pytest.raises(UserError, match="the run was trained on a text file"):
        check_same_source(None, new, "resume")


@pytest.mark.parametrize("path,needle", [
    ("docs/*.rst", "data.path: no file matches docs/*.rst"),
    ("empty", "data.path: no file in the folder empty (hidden files are left out)"),
    ("[docs/a.txt, docs/nope.txt]", "data file not found: docs/nope.txt (an entry of data.path)"),
    ("[docs/a.txt, 'docs/*.rst']", "data.path: no file matches docs/*.rst"),
    ("only_latin", "data.path=only_latin: none of its 1 file can be used (1 not valid UTF-8); to train on files "
                   "that are not UTF-8, set data.vocab=bytes"),
    ("only_empty", "data.path=only_empty: every file it can use is empty (2 files)"),
    ("[]", "data.path: an empty list; give a file, a folder, a glob or a list of them"),
    ("[docs/a.txt, 3]", "data.path: every entry of its list must be a path (a string), got 3"),
    ("[docs/a.txt, '']", "data.path is an empty path"),
    ("[docs/a.txt, [docs/b.txt]]", "data.path: every entry of its list must be a path (a string), got ['docs/b.txt']"),
])
def test_every_bad_entry_or_pattern_is_one_error_line(docs, tmp_path, capsys, path, needle):
    (tmp_path / "empty" / ".hidden").mkdir(parents=True)
    write_tree(tmp_path, {"only_latin/x.txt": b"caf\xe9", "only_empty/a.txt": "", "only_empty/b.txt": ""})
    out = tmp_path / "run"
    assert main(tiny_run(path, out)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {needle}") and err.count("\n") == 1 and "Traceback" not in err, err
    assert not out.exists()


def test_a_separator_that_is_not_text_is_one_error_line(docs, tmp_path, capsys):
    assert main(tiny_run("docs", tmp_path / "run", "data.separator=[1]")) == 2
    assert capsys.readouterr().err.startswith("error: malformed override 'data.separator=[1]': expected a single value")
    assert main(tiny_run("docs", tmp_path / "run", "data.separator=3")) == 2
    assert capsys.readouterr().err == "error: data.separator: expected a string, got 3\n"
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_a_glob_that_yaml_cannot_read_is_taken_as_text():
    assert build_config({}, ["data.path=**/*.md"]).data.path == "**/*.md"
    assert build_config({}, ["data.path=[a.txt, b/]"]).data.path == ["a.txt", "b/"]
    with pytest.raises(UserError, match="malformed override"):
        build_config({}, ["train.seed=*x"])


def test_the_joined_text_is_as_private_as_its_most_private_file(docs):
    text_path, _, _ = ensure("docs")
    assert text_path.stat().st_mode & 0o777 == 0o644  # files others may read: a text others may read
    os.chmod(docs / "sub" / "c.md", 0o640)
    text_path, _, _ = ensure("docs")
    assert text_path.stat().st_mode & 0o777 == 0o640
    assert Path(str(text_path) + ".chars.ids").exists() is False  # encoded only by a run
    corpus = load_corpus(build_config({}, ["data.path=docs"]).data, progress=False, log=lambda *a: None)
    assert corpus.source_info["files"] == 4
    assert Path(str(text_path) + ".chars.ids").stat().st_mode & 0o777 == 0o640
