"""The Python API: train a model, load one, and sample from it, score text with it or look inside
it, in a few calls. Its defaults are ``charrnn sample``'s, and the same seed gives the same text.

    import charrnn_torch as cr
    summary = cr.train("tutorial.yaml", "train.max_steps=200")
    model = cr.load(summary["out_dir"])
    model.sample("ROMEO:", length=200, temperature=0.8, seed=1)
    model.score("To be, or not to be")["bpc"]
    model.trace("To be, or not to be")["h"]  # (L, T, H): every unit at every character
    model.fill("To b_, or not t_ be")["text"]  # each _ replaced by its most likely character

Bad input raises ``UserError`` with the message the CLI would print.
"""
import math

import numpy as np

from .errors import UserError
from .insight.visualize import trace as trace_states
from .sampling import fill as filling
from .sampling.sample import DEFAULT_LENGTH, Sampling, beam_search, check_prime, default_prime, generate_batch, score
from .training import checkpoint, config as config_mod
from .training.trainer import train as train_run


class Model:
    """A trained model with its vocabulary and checkpoint, as ``load`` returns it. ``net`` is the
    CharRNN itself (``forward(x, h0=None) -> (logits, h)``), in eval mode."""

    def __init__(self, net, vocab, ckpt, path):
        self.net, self.vocab, self.checkpoint, self.path = net, vocab, ckpt, path

    def __repr__(self):
        n = self.net
        return (f"Model({n.cell} {n.num_layers}x{n.hidden_size}, {len(self.vocab)} symbols, "
                f"step {self.checkpoint.get('step')}, from {self.path})")

    @property
    def step(self):
        return self.checkpoint.get("step")

    def default_prime(self):
        """The prime used when none is given: a newline, else the most frequent character."""
        return default_prime(self.vocab, self.checkpoint.get("char_counts"))

    def sample(self, prime=None, length=DEFAULT_LENGTH, temperature=Sampling.temperature, top_k=Sampling.top_k,
               top_p=Sampling.top_p, seed=None, greedy=False, num_samples=1):
        """prime plus length generated characters (tokens for a words or bpe model, decoded); a list of
        num_samples such texts when it is more than 1. The knobs are Sampling's (and ``charrnn
        sample``'s flags, with their defaults)."""
        self._left_to_right("generate text")
        prime = self.default_prime() if prime is None else prime
        sampling = Sampling(temperature, top_k, top_p, greedy, seed)
        _check_sampling(sampling, length, num_samples)
        texts = generate_batch(self.net, self.vocab, prime, length, num_samples, sampling)
        return texts[0] if num_samples == 1 else texts

    def beam(self, prime=None, length=DEFAULT_LENGTH, width=8):
        """(the most likely continuation found by beam search, prime included; its log-probability in
        nats)."""
        self._left_to_right("generate text")
        prime = self.default_prime() if prime is None else prime
        if width < 1:
            raise UserError(f"width={width}: beam search needs at least 1 beam")
        return beam_search(self.net, self.vocab, prime, length, width)

    def score(self, text):
        """The model's loss on text: {"loss" (nats per character; per byte for a bytes model, per token
        for words and bpe), "bpc" (bits per character of text), "count", "chars", "unknown_chars",
        ...}, as ``charrnn sample --score`` prints it."""
        self._left_to_right("score text")
        return score(self.net, self.vocab, text)

    def trace(self, text):
        """Every layer's state and gates at every character (token) of text, run from the zero state:
        {"h": (L, T, H), "c" for the LSTM, one entry per gate of the cell} as numpy float64 arrays,
        and "text": the characters they belong to."""
        self._left_to_right("be traced")
        check_prime(self.vocab, text)
        found = trace_states(self.net, self.vocab.encode(text))
        return {**found, "text": text}

    def fill(self, text, mask="_", top_k=0, rescore=filling.RESCORE):
        """text with each mask character replaced by the model's most likely character there, the
        surest gap first, as ``charrnn fill`` does: {"text", "gaps": [{"position", "char", "prob",
        "order", "candidates": the top_k (char, prob)}]}. rescore: a left-to-right model's right
        context, in characters (0: left context only); a bidirectional model reads both sides."""
        for name, value in (("top_k", top_k), ("rescore", rescore)):
            if not isinstance(value, (int, np.integer)) or value < 0:
                raise UserError(f"{name}={value!r}: must be an integer >= 0")
        how = filling.Fill(rescore=rescore)
        return filling.fill(self.net, self.vocab, text, mask, top_k, how, self.checkpoint.get("char_counts"))

    def _left_to_right(self, what):
        checkpoint.refuse_bidirectional(self.net, self.path, what)


def _check_sampling(sampling, length, num_samples):
    if not (sampling.temperature > 0 and math.isfinite(sampling.temperature)):
        raise UserError(f"temperature={sampling.temperature}: must be a finite number > 0")
    if not 0 < sampling.top_p <= 1:
        raise UserError(f"top_p={sampling.top_p}: must be in (0, 1]")
    for name, value, lo in (("top_k", sampling.top_k, 0), ("length", length, 0), ("num_samples", num_samples, 1)):
        if not isinstance(value, (int, np.integer)) or value < lo:
            raise UserError(f"{name}={value!r}: must be an integer >= {lo}")


def load(path, device="cpu", step=None, impl=None):
    """The Model in a checkpoint file or run directory (its best.pt, else ckpt.pt; step: its
    ckpt-<step>.pt, kept by train.keep_checkpoints), on device (cpu, cuda, cuda:N or auto); impl
    runs it as another impl than the checkpoint's, as ``charrnn sample --impl`` does."""
    net, vocab, ckpt = checkpoint.load_model(path, device, step, impl)
    return Model(net, vocab, ckpt, path)


def train(config="shakespeare.yaml", *overrides, resume=None, force=False, progress=True, log=print):
    """Train as ``charrnn train --config CONFIG key=value ...`` does (config: a YAML file or a name in
    configs/; overrides: "key=value" strings), or continue the run in resume (its directory or a
    checkpoint). Returns the run's summary: out_dir, step, val_loss, best_val, the logs."""
    resume_ckpt, resume_dir = None, None
    if resume is not None:
        path = checkpoint.resolve(resume, names=("ckpt.pt", "best.pt"))
        resume_ckpt, resume_dir = checkpoint.load(path), path.parent
        cfg = config_mod.build_config(resume_ckpt["config"], overrides)
    else:
        cfg = config_mod.build_config(config_mod.read_yaml(config_mod.find_config(config)), overrides)
    explicit = "out_dir" in config_mod.override_keys(overrides)
    return train_run(cfg, out_dir_explicit=explicit, force=force, resume=resume_ckpt,
                     resume_dir=resume_dir, progress=progress, log=log)
