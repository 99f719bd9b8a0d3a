"""Proves the data path: the corpus fetch (against a local HTTP server on 127.0.0.1),
UTF-8 reading, the deterministic vocabulary, the contiguous split, and both batchers
(stateful streams are contiguous, targets shifted by one; random windows are reproducible).

Run: pytest tests/test_data.py
"""
import hashlib
import http.server
import threading
from functools import partial

import pytest
import torch

from charrnn_torch.data import batchers, corpus, vocab
from charrnn_torch.errors import UserError


@pytest.fixture
def http_root(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_download_good_fetch(http_root, tmp_path):
    root, base = http_root
    body = "First Citizen:\nBefore we proceed any further, hear me speak.\n".encode()
    (root / "input.txt").write_bytes(body)
    dest = tmp_path / "data" / "corpus.txt"
    got = corpus.ensure_corpus(dest, default_path=str(dest), url=f"{base}/input.txt",
                             sha256=hashlib.sha256(body).hexdigest(), progress=False)
    assert got == dest and dest.read_bytes() == body
    assert [p.name for p in dest.parent.iterdir()] == ["corpus.txt"]  # no temp file left behind


def test_download_hash_mismatch_keeps_nothing(http_root, tmp_path):
    root, base = http_root
    (root / "input.txt").write_bytes(b"not the corpus you want")
    dest = tmp_path / "data" / "corpus.txt"
    with pytest.raises(UserError) as e:
        corpus.download(f"{base}/input.txt", dest, sha256="0" * 64, progress=False)
    msg = str(e.value)
    assert "sha256" in msg and str(dest.resolve()) in msg and msg.count(base) == 1
    assert not dest.exists() and not dest.parent.exists()  # the data/ it made is gone again
    assert list(tmp_path.iterdir()) == [root]


def test_offline_says_where_to_put_the_file(tmp_path):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens here now: a refused connection, like being offline
    dest = tmp_path / "corpus.txt"
    with pytest.raises(UserError) as e:
        corpus.ensure_corpus(dest, default_path=str(dest), url=f"http://127.0.0.1:{port}/input.txt", progress=False)
    assert "cannot download" in str(e.value) and str(dest.resolve()) in str(e.value)
    assert str(e.value).count(f"127.0.0.1:{port}") == 1  # the URL once: it is long
    assert not dest.exists()


def test_a_failed_download_leaves_no_folder_it_made(tmp_path):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("x")
    for dest in (tmp_path / "data" / "deeper" / "corpus.txt", tmp_path / "mine" / "corpus.txt"):
        with pytest.raises(UserError, match="cannot download"):
            corpus.download(f"http://127.0.0.1:{port}/input.txt", dest, sha256="0" * 64, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # data/deeper/ made and removed; mine/ kept
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["keep.txt"]


def test_non_default_missing_path_is_not_downloaded(tmp_path):
    with pytest.raises(UserError, match="data file not found"):
        corpus.ensure_corpus(tmp_path / "mine.txt", url="http://127.0.0.1:9/never")


def test_canonical_source():
    assert corpus.CORPUS_URL.endswith("karpathy/char-rnn/master/data/tinyshakespeare/input.txt")
    assert corpus.CORPUS_SHA256 == "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


def test_read_corpus_errors(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"abc\xff\xfedef")
    with pytest.raises(UserError, match=r"not valid UTF-8 \(bad byte at offset 3\)"):
        corpus.read_corpus(bad)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match="is empty"):
        corpus.read_corpus(empty)
    with pytest.raises(UserError, match="is a directory"):
        corpus.read_corpus(tmp_path)


def test_vocab_is_sorted_and_round_trips():
    text = "hello, world\n"
    v = vocab.Vocab.from_text(text)
    assert v.chars == sorted(set(text))
    assert v.decode(v.encode(text).tolist()) == text
    assert v.unknown("hex!") == ["!", "x"]


def test_split_is_contiguous():
    ids = torch.arange(100)
    train, val = corpus.split(ids, 0.1)
    assert torch.equal(train, torch.arange(90)) and torch.equal(val, torch.arange(90, 100))


def test_stream_batches_are_contiguous_shifted_and_wrap():
    ids = torch.arange(1000)
    b = batchers.StreamBatcher(ids, batch_size=4, seq_len=10)
    assert b.steps_per_epoch == (250 - 1) // 10
    x0, y0, reset0 = b.next()
    x1, y1, reset1 = b.next()
    assert reset0 and not reset1
    assert x0.shape == (4, 10)
    # stream b is the b-th contiguous quarter of the text
    assert torch.equal(x0[:, 0], torch.tensor([0, 250, 500, 750]))
    assert torch.equal(y0, x0 + 1)  # targets are the next character
    assert torch.equal(x1[:, 0], x0[:, -1] + 1)  # the next window continues each stream
    for _ in range(b.steps_per_epoch - 2):
        _, _, reset = b.next()
        assert not reset
    x, _, reset = b.next()
    assert reset and torch.equal(x, x0) and b.epoch == 1


def test_stream_batcher_splits_streams_across_ranks():
    ids = torch.arange(1000)
    full = batchers.StreamBatcher(ids, 4, 10).next()[0]
    r0 = batchers.StreamBatcher(ids, 4, 10, rank=0, world_size=2).next()[0]
    r1 = batchers.StreamBatcher(ids, 4, 10, rank=1, world_size=2).next()[0]
    assert torch.equal(torch.cat([r0, r1]), full)


def test_too_short_for_one_batch():
    with pytest.raises(UserError, match="too short"):
        batchers.StreamBatcher(torch.arange(50), batch_size=8, seq_len=10)


def test_random_windows_reproducible_and_shifted():
    ids = torch.arange(500)
    a, b = batchers.RandomWindowBatcher(ids, 8, 16, seed=3), batchers.RandomWindowBatcher(ids, 8, 16, seed=3)
    xa, ya, reset = a.next()
    xb, _, _ = b.next()
    assert reset and torch.equal(xa, xb) and torch.equal(ya, xa + 1)
    state = a.state_dict()
    nxt = a.next()[0]
    a.load_state_dict(state)
    assert torch.equal(a.next()[0], nxt)


def test_eval_windows_cover_every_character():
    ids = torch.arange(103)
    xs, ys = zip(*batchers.eval_windows(ids, num_streams=4, seq_len=7))
    x = torch.cat(xs, 1)
    y = torch.cat(ys, 1)
    assert x.shape == (4, 24) and torch.equal(y, x + 1)
    assert torch.equal(x[:, 0], torch.tensor([0, 25, 50, 75]))
