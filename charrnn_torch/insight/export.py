"""Taking a trained model out of this package: its one-step function as an ONNX model or a
``torch.export`` program (.pt2), and a self-contained browser playground (``playground.py``).

What is exported is the step a sampler needs,

    (x_t ids (B,), state) -> (logits (B, V), next state)

with the state h (L, B, H), or h and c for the LSTM, as separate inputs and outputs, and B dynamic.
It is the model's own forward at T = 1, run by a copy with impl=loop and the same weights: the
fused impl's hand-written autograd Functions do not trace, and the maths is the same (tests prove
both against the numpy reference). The window function over (B, T) is not exported: the loop
unroll is a Python loop over T, which torch.export fixes to the example's T.

Each file is made in memory, run against torch's step for CHECK_STEPS steps (largest_difference),
and only then written (atomically): a failed export leaves no file, and an old file at --out stays.
"""
import base64
import contextlib
import importlib
import io
import json

import numpy as np
import torch
import torch.nn as nn

from . import playground
from ..errors import RunFailed, UserError, one_line, torch_quiet
from ..files import json_text
from ..model.cells import CharRNN
from ..sampling.sample import default_prime

FORMATS = ("onnx", "pt2", "html")
EXTRA = 'pip install -e ".[export]"'
ONNX_MODULES = ("onnx", "onnxruntime", "onnxscript")  # onnxscript: torch's (dynamo) ONNX exporter needs it
ONNX_OPSET = 20  # torch 2.13's own default, pinned so that a newer torch writes the same file
METADATA_KEY = "charrnn.json"  # the pt2 archive's extra file holding what the ONNX metadata holds
EXAMPLE_BATCH = 2  # not 0 or 1, which torch.export would fix the batch dimension to
CHECK_STEPS = 20
CHECK_TOL = 1e-5  # relative to the largest output, per step: float32 kernels summing in another order


class Step(nn.Module):
    """(x (B,) ids, h (L, B, H)) -> (logits (B, V), h (L, B, H)): one step of the model it wraps."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, h):
        logits, h = self.model(x[:, None], h)
        return logits[:, 0], h


class LSTMStep(Step):
    """The LSTM's step, its state (h, c) as two inputs and two outputs."""

    def forward(self, x, h, c):
        logits, (h, c) = self.model(x[:, None], (h, c))
        return logits[:, 0], h, c


def step_module(model):
    """model's step as a module of its own: a copy with impl=loop, the same weights, in eval mode."""
    loop = CharRNN(**dict(model.model_args(), impl="loop")).to(dtype=model.W_hy.dtype)
    loop.load_state_dict(model.state_dict())
    return (LSTMStep if len(model.state_names) == 2 else Step)(loop.cpu()).eval()


def example_inputs(step, batch, generator=None):
    """(x, *state): random ids and a random state, of the step module's shapes and dtype."""
    m = step.model
    x = torch.randint(m.vocab_size, (batch,), generator=generator)
    state = [torch.rand(m.num_layers, batch, m.hidden_size, generator=generator, dtype=m.W_hy.dtype) * 2 - 1
             for _ in m.state_names]
    return (x, *state)


@contextlib.contextmanager
def _exporter(what):
    """torch's exporters, quiet (errors.torch_quiet), their failures one RunFailed line."""
    try:
        with torch_quiet("torch.onnx"):
            yield
    except (UserError, RunFailed):
        raise
    except Exception as e:  # noqa: BLE001 - torch.export and torch.onnx fail in many ways, all "could not export"
        raise RunFailed(f"could not export the model as {what} ({one_line(e)[:300]}); nothing was written") from None


def exported_program(step):
    """The step as a torch.export program, the batch dimension dynamic."""
    batch = torch.export.Dim("batch")
    shapes = ({0: batch},) + ({1: batch},) * len(step.model.state_names)
    with _exporter("a torch.export program"), torch.no_grad():
        return torch.export.export(step, example_inputs(step, EXAMPLE_BATCH), dynamic_shapes=shapes)


def metadata(model, vocab, ckpt, source):
    """What a sampler needs beside the weights, as strings: the vocabulary and the model's config
    (JSON), where the weights came from, and the inputs and outputs of the step."""
    names = model.state_names
    tokenizer = {"charrnn.tokenizer": vocab.tokenizer_json} if vocab.tokenizer_json else {}  # a BPE's merges
    return {
        **tokenizer,
        "charrnn.vocab": json.dumps(list(vocab.chars), ensure_ascii=False),
        "charrnn.vocab_mode": vocab.mode,
        "charrnn.model_args": json.dumps(model.model_args()),
        "charrnn.default_prime": default_prime(vocab, ckpt.get("char_counts")),
        "charrnn.checkpoint": str(source),
        "charrnn.step": json_text(ckpt.get("step")),
        "charrnn.val_loss": json_text(ckpt.get("last_val")),  # a NaN loss is null: valid JSON
        "charrnn.inputs": ", ".join(("x",) + names),
        "charrnn.outputs": ", ".join(("logits",) + tuple(f"{n}_next" for n in names)),
        "charrnn.signature": "x: (B,) int64 character ids; h, c: (L, B, H) states, zeros to start; logits: "
                             "(B, V), unnormalised log-probabilities of the next character",
    }


# ---------------------------------------------------------------- ONNX

def require_onnx():
    """The optional packages the onnx format needs, or a UserError naming the extra."""
    missing = []
    for name in ONNX_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UserError(f"--format onnx needs {', '.join(missing)}, not installed: {EXTRA}")


def onnx_bytes(step, meta):
    """The step as a serialized ONNX model (opset ONNX_OPSET, dynamic batch "batch"), meta in its
    metadata_props."""
    import onnx

    names = step.model.state_names
    program = exported_program(step)
    with _exporter("ONNX"):
        proto = torch.onnx.export(program, input_names=["x", *names],
                                  output_names=["logits", *(f"{n}_next" for n in names)],
                                  dynamo=True, verbose=False, opset_version=ONNX_OPSET).model_proto
        _name_batch_dim(proto.graph)
        onnx.helper.set_model_props(proto, meta)
        onnx.checker.check_model(proto)
        return proto.SerializeToString()


def _name_batch_dim(graph):
    """torch names the dynamic dimension after its symbol (s12): call it batch, for readers."""
    symbol = graph.input[0].type.tensor_type.shape.dim[0].dim_param
    for value in (*graph.input, *graph.output, *graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if symbol and dim.dim_param == symbol:
                dim.dim_param = "batch"


def onnx_runner(data):
    """run(x, *state) -> outputs as tensors, through onnxruntime on the CPU."""
    import onnxruntime

    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(*inputs):
        outs = session.run(None, {n: t.numpy() for n, t in zip(names, inputs)})
        return tuple(torch.from_numpy(o) for o in outs)
    return run


# ---------------------------------------------------------------- torch.export

def pt2_bytes(step, meta):
    """The step as a torch.export archive, meta as its extra file METADATA_KEY."""
    buf, program = io.BytesIO(), exported_program(step)
    with _exporter("a pt2 archive"):
        torch.export.save(program, buf, extra_files={METADATA_KEY: json.dumps(meta)})
    return buf.getvalue()


def load_pt2(data):
    """(the program, its metadata) from a pt2 archive's bytes."""
    extra = {METADATA_KEY: ""}
    with _exporter("a pt2 archive (loading it)"):
        program = torch.export.load(io.BytesIO(data), extra_files=extra)
    return program, json.loads(extra[METADATA_KEY])


def pt2_runner(data):
    module = load_pt2(data)[0].module()

    @torch.no_grad()
    def run(*inputs):
        return tuple(module(*inputs))
    return run


# ---------------------------------------------------------------- the check

@torch.no_grad()
def largest_difference(run, step, steps=CHECK_STEPS, batch=3, seed=0):
    """Run an exported step (run) and torch's side by side on random characters, from a random
    state carried by torch's step and given to both at each step: the largest difference of any
    output, relative to the largest magnitude of that output (at least 1). Each step starts from
    the same state, so what is measured is one step's error, not its growth through a trained
    model's recurrence (the tests follow each side's own state for 50 steps)."""
    g = torch.Generator().manual_seed(seed)
    x, *state = example_inputs(step, batch, g)
    worst = 0.0
    for _ in range(steps):
        want, got = step(x, *state), run(x, *state)
        for w, o in zip(want, got):
            worst = max(worst, float((w - o.to(w.dtype)).abs().max()) / max(1.0, float(w.abs().max())))
        state = list(want[1:])
        x = torch.randint(step.model.vocab_size, (batch,), generator=g)
    return worst


def checked(data, runner, step, what):
    """data, once the file it holds has matched torch over CHECK_STEPS steps."""
    with _exporter(f"{what} (running it)"):
        worst = largest_difference(runner(data), step)
    if not worst <= CHECK_TOL:
        raise RunFailed(f"the exported {what} differs from torch by {worst:.3g} (allowed {CHECK_TOL:g}); "
                        f"nothing was written")
    return data, worst


# ---------------------------------------------------------------- the playground

def packed_weights(model, half):
    """Every tensor of the model as one little-endian float32 (float16 with half) blob, base64, and
    its index: [{name, shape, offset}] with offsets in elements."""
    dtype = np.dtype("<f2" if half else "<f4")
    index, parts, offset = [], [], 0
    for name, t in model.state_dict().items():
        a = t.detach().cpu().double().numpy().astype(dtype)
        index.append({"name": name, "shape": list(a.shape), "offset": offset})
        parts.append(a.tobytes())
        offset += a.size
    return base64.b64encode(b"".join(parts)).decode("ascii"), index


def html_bytes(model, vocab, ckpt, source, half):
    """The playground page for model, weights embedded."""
    if vocab.mode != "chars":
        raise UserError(f"the playground shows characters: --format html needs a model trained with "
                        f"data.vocab=chars (this one models {vocab.mode}; export it as onnx or pt2)")
    blob, index = packed_weights(model, half)
    header = {"checkpoint": str(source), "step": ckpt.get("step"), "val_loss": ckpt.get("last_val"),
              "cell": model.cell, "num_layers": model.num_layers, "hidden_size": model.hidden_size,
              "vocab_size": model.vocab_size, "parameters": sum(p.numel() for p in model.parameters()),
              "weights": "float16" if half else "float32"}
    data = {"header": header, "vocab": list(vocab.chars), "tensors": index,
            "default_prime": default_prime(vocab, ckpt.get("char_counts"))}
    return playground.render(data, blob).encode("utf-8")


# ---------------------------------------------------------------- the command's work

def export(model, vocab, ckpt, source, fmt, half=False):
    """(the file's bytes, a line saying what they hold) for one format. Nothing is written here."""
    if fmt == "html":
        data = html_bytes(model, vocab, ckpt, source, half)
        return data, (f"the playground for the {model.cell} {model.num_layers}x{model.hidden_size} model, weights "
                      f"in {'float16' if half else 'float32'}")
    step = step_module(model)
    meta = metadata(model, vocab, ckpt, source)
    io_names = f"({meta['charrnn.inputs']}) -> ({meta['charrnn.outputs']})"
    if fmt == "onnx":
        data, worst = checked(onnx_bytes(step, meta), onnx_runner, step, "ONNX model")
        return data, (f"ONNX opset {ONNX_OPSET}, step {io_names}, dynamic batch; onnxruntime matches torch to "
                      f"{worst:.1e} over {CHECK_STEPS} steps")
    data, worst = checked(pt2_bytes(step, meta), pt2_runner, step, "program")
    return data, (f"torch.export program, step {io_names}, dynamic batch; loaded back, it matches torch to "
                  f"{worst:.1e} over {CHECK_STEPS} steps")
