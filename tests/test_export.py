"""Proves `charrnn export` (export.py) for the onnx and pt2 formats, and its refusals:

- onnx: onnxruntime (CPU) runs the written file as the checkpoint's own model runs (impl=fused, as
  training saves it, with dropout between layers), outputs within 1e-5 over 50 steps with the state
  carried, for each cell at L = 1 and 2, at a batch size other than the one it was exported with;
  its metadata holds the vocabulary and the config, and the file alone samples the same greedy text
  as `sample.generate`;
- pt2: torch.export.load's program likewise, and loading it unpickles nothing (torch.load only with
  weights_only, pickle never);
- bad input (an unknown format, a file that is not a checkpoint, a missing --step, --out a directory
  or in a missing one, --half without html, html for a byte-mode model, onnx without its packages):
  one `error:` line, exit 2, nothing written; an export that fails its own check against torch
  writes nothing and leaves the old file at --out as it was (exit 1).

The playground (--format html) is proven in a real browser by test_playground.py.
"""
import json
import os
import pickle
import sys

import pytest
import torch

from charrnn_torch.training import checkpoint
from charrnn_torch.insight import export
from charrnn_torch.sampling import sample
from charrnn_torch.cli import main
from charrnn_torch.data.vocab import ByteVocab, Vocab

V_CHARS = "abcdefghi \n"  # V = 11
H, B, STEPS, TOL = 7, 3, 50, 1e-5
CASES = [(cell, L) for cell in ("rnn", "lstm", "gru") for L in (1, 2)]


def _require_onnx():
    try:
        import onnx, onnxruntime, onnxscript  # noqa: F401, E401
    except ImportError as e:
        if os.environ.get("CHARRNN_REQUIRE_EXPORT") == "1":
            pytest.fail(f"{e.name} is not installed (pip install -e '.[dev]')")
        pytest.skip(f"{e.name} is not installed (pip install -e '.[export]')")


def save_model(path, cell, L, vocab=None, V=None):
    """A random model saved as training saves one (impl=fused), its weights doubled so that its
    logits are of order 1 and its state moves from step to step. Not more: at 3x the 2-layer tanh
    net is chaotic, and float32 rounding differences between two right answers (fused GEMMs,
    onnxruntime's kernels) grow past 1e-5 within 50 steps."""
    vocab = vocab or Vocab(sorted(V_CHARS))
    torch.manual_seed(len(cell) * 10 + L)
    model = checkpoint.CharRNN(V or len(vocab), H, num_layers=L, dropout=0.25 if L > 1 else 0.0, impl="fused",
                               cell=cell)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2)
    checkpoint.save({"format": checkpoint.FORMAT, "model": model.state_dict(), "model_args": model.model_args(),
                     "vocab": list(vocab.chars), "vocab_mode": vocab.mode, "step": 7, "last_val": 1.5}, path)
    return path


def exported(tmp_path, cell, L, fmt):
    ckpt = save_model(tmp_path / f"{cell}{L}.pt", cell, L)
    out = tmp_path / f"{cell}{L}.{fmt}"
    assert main(["export", "--checkpoint", str(ckpt), "--format", fmt, "--out", str(out)]) == 0
    return ckpt, out


@torch.no_grad()
def assert_steps_match(run, ckpt_path, batch=B, steps=STEPS):
    """run(x, *state) -> (logits, *state), fed its own state, against the checkpoint's model stepped
    one character at a time, from the zero state, on the same random characters."""
    model, _, _ = checkpoint.load_model(ckpt_path)
    g = torch.Generator().manual_seed(1)
    ours = model.init_hidden(batch)
    theirs = list(ours) if isinstance(ours, tuple) else [ours]
    for t in range(steps):
        x = torch.randint(model.vocab_size, (batch,), generator=g)
        logits, ours = model(x[:, None], ours)
        got = run(x, *theirs)
        want = (logits[:, 0], *(ours if isinstance(ours, tuple) else (ours,)))
        for name, w, o in zip(("logits", "h", "c"), want, got):
            diff = float((w - o).abs().max())
            assert diff <= TOL, f"step {t}: {name} differs by {diff:.3g}"
        theirs = list(got[1:])


def onnx_session(path):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return lambda *xs: [torch.from_numpy(o) for o in session.run(None, {n: x.numpy() for n, x in zip(names, xs)})]


# ---------------------------------------------------------------- onnx

@pytest.mark.slow
@pytest.mark.parametrize("cell,L", CASES)
def test_onnxruntime_matches_torch_over_50_steps(tmp_path, cell, L):
    _require_onnx()
    ckpt, out = exported(tmp_path, cell, L, "onnx")
    assert_steps_match(onnx_session(out), ckpt)
    assert_steps_match(onnx_session(out), ckpt, batch=1, steps=5)


def test_onnx_metadata_is_enough_to_sample(tmp_path):
    _require_onnx()
    import onnx

    ckpt, out = exported(tmp_path, "gru", 2, "onnx")
    proto = onnx.load(str(out))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [export.ONNX_OPSET]
    assert [i.name for i in proto.graph.input] == ["x", "h"]
    assert [o.name for o in proto.graph.output] == ["logits", "h_next"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    vocab = Vocab(json.loads(meta["charrnn.vocab"]))
    args = json.loads(meta["charrnn.model_args"])
    assert vocab.chars == sorted(V_CHARS) and (args["cell"], args["num_layers"], args["hidden_size"]) == ("gru", 2, H)
    # From here on only the file: greedy decoding through onnxruntime, as a user without this package would.
    run, prime = onnx_session(out), "bad fig\n"
    h = torch.zeros(args["num_layers"], 1, args["hidden_size"])
    for c in prime:
        logits, h = run(torch.tensor([vocab.stoi[c]]), h)
    text = prime
    for _ in range(40):
        nxt = int(logits[0].argmax())
        text += vocab.chars[nxt]
        logits, h = run(torch.tensor([nxt]), h)
    model, _, _ = checkpoint.load_model(ckpt)
    assert text == sample.generate(model, vocab, prime, 40, sample.Sampling(greedy=True))


def test_onnx_without_its_packages_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    ckpt = save_model(tmp_path / "m.pt", "rnn", 1)
    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "onnxruntime" in err
    assert 'pip install -e ".[export]"' in err and not out.exists()


# ---------------------------------------------------------------- pt2

@pytest.mark.slow
@pytest.mark.parametrize("cell,L", CASES)
def test_pt2_matches_torch_over_50_steps(tmp_path, cell, L):
    ckpt, out = exported(tmp_path, cell, L, "pt2")
    module = torch.export.load(out).module()
    assert_steps_match(lambda *xs: module(*xs), ckpt)
    assert_steps_match(lambda *xs: module(*xs), ckpt, batch=1, steps=5)


def test_pt2_loads_without_unpickling(tmp_path, monkeypatch):
    ckpt, out = exported(tmp_path, "lstm", 2, "pt2")
    real_load, loads = torch.load, []

    def weights_only_load(*args, **kwargs):
        assert kwargs.get("weights_only", True) is True, "torch.load without weights_only"
        loads.append(1)
        return real_load(*args, **kwargs)

    def refuse(*args, **kwargs):
        raise AssertionError("the archive asked to unpickle an object")

    monkeypatch.setattr(torch, "load", weights_only_load)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(torch._C, "_pickle_load_obj", refuse)
    extra = {export.METADATA_KEY: ""}
    program = torch.export.load(out, extra_files=extra)
    assert loads, "the guard saw no load at all"
    assert [s.arg.name for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"] == ["x", "h", "c"]
    assert json.loads(json.loads(extra[export.METADATA_KEY])["charrnn.model_args"])["cell"] == "lstm"
    assert_steps_match(lambda *xs: program.module()(*xs), ckpt, steps=5)


# ---------------------------------------------------------------- refusals

def _byte_model(tmp_path):
    return save_model(tmp_path / "bytes.pt", "rnn", 1, vocab=ByteVocab())


def _run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    save_model(run / "best.pt", "rnn", 1)
    return run


BAD = {  # name -> (argv after the checkpoint's, made from tmp_path; a word the error names)
    "unknown format": (lambda d: ["--checkpoint", str(save_model(d / "m.pt", "rnn", 1)), "--format", "tflite",
                                  "--out", str(d / "out")], "tflite"),
    "not a checkpoint": (lambda d: ["--checkpoint", str(_text_file(d)), "--format", "pt2", "--out", str(d / "out")],
                         "not a torch.save archive"),
    "missing step": (lambda d: ["--checkpoint", str(_run_dir(d)), "--step", "500", "--format", "pt2",
                                "--out", str(d / "out")], "no checkpoint of step 500"),
    "out is a directory": (lambda d: ["--checkpoint", str(save_model(d / "m.pt", "rnn", 1)), "--format", "pt2",
                                      "--out", str(d)], "is a directory"),
    "out in a missing directory": (lambda d: ["--checkpoint", str(save_model(d / "m.pt", "rnn", 1)), "--format",
                                              "html", "--out", str(d / "no" / "out")], "does not exist"),
    "half without html": (lambda d: ["--checkpoint", str(save_model(d / "m.pt", "rnn", 1)), "--format", "pt2",
                                     "--half", "--out", str(d / "out")], "--half"),
    "html of a byte model": (lambda d: ["--checkpoint", str(_byte_model(d)), "--format", "html",
                                        "--out", str(d / "out")], "data.vocab=chars"),
}


def _text_file(d):
    (d / "notes.pt").write_text("not a checkpoint\n")
    return d / "notes.pt"


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_error_line_and_writes_nothing(tmp_path, capsys, case):
    make_argv, named = BAD[case]
    argv = make_argv(tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert main(["export", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    assert named in captured.err and captured.out == ""
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # no file, no temporary left


def test_failed_check_writes_nothing_and_keeps_the_old_file(tmp_path, capsys, monkeypatch):
    ckpt = save_model(tmp_path / "m.pt", "gru", 2)
    out = tmp_path / "m.pt2"
    out.write_bytes(b"the previous export")
    monkeypatch.setattr(export, "CHECK_TOL", -1.0)  # no difference is small enough: the check must refuse
    assert main(["export", "--checkpoint", str(ckpt), "--format", "pt2", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the exported program differs from torch") and err.count("\n") == 1, err
    assert out.read_bytes() == b"the previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "m.pt2"]
