"""What a checkpoint says about the run that wrote it: whether a config may resume it, and the
corpus it trained on, rebuilt for those that need it again (dynamic evaluation, the look-inside
page's validation text)."""
import os

import torch

from ..data.corpus import EXTRA_SHOWN, check_same_source, load_corpus, names_one_file
from ..data.files_corpus import spec_text
from ..data.vocab import as_ids
from ..errors import UserError
from ..model.cells import CharRNN
from . import config as config_mod


def check_resume(ckpt, config_values, corpus):
    """What may change on resume: config.check_resume's rule for the new config (config_values, a
    plain dict), and the same corpus and vocabulary."""
    config_mod.check_resume(ckpt["config"], config_values)
    check_same_source(ckpt.get("data_source"), corpus.source_info, "resume")
    vocab = corpus.vocab
    if ckpt["vocab"] != vocab.chars:
        raise UserError(f"cannot resume: the vocabulary of {spec_text(config_values['data']['path'])} "
                        f"({len(vocab)} {vocab.unit}s) differs from the checkpoint's ({len(ckpt['vocab'])} {vocab.unit}s)")


def run_corpus(ckpt, purpose):
    """The corpus the checkpoint's run trained on (data.Corpus, in the checkpoint's vocabulary), for
    what needs it again: purpose finishes the sentence of the error when it cannot be had."""
    try:
        data_cfg = config_mod.build_config(ckpt["config"]).data
    except (KeyError, TypeError, UserError):
        raise UserError(f"the checkpoint records no usable data config, needed to {purpose}") from None
    if names_one_file(data_cfg.path) and not os.path.exists(data_cfg.path):
        raise UserError(f"data file not found: {data_cfg.path} (the run's data.path), needed to {purpose}")
    corpus = load_corpus(data_cfg, progress=False, base_vocab=ckpt["vocab"], log=lambda *a: None, defer_install=True)
    with corpus.installed_if_no_error():  # a cache built for a corpus refused writes nothing
        check_same_source(ckpt.get("data_source"), corpus.source_info, purpose)
        new = corpus.vocab.chars[len(ckpt["vocab"]):]  # the corpus's characters the model never saw, after its own
        if new:
            shown = ", ".join(repr(c) for c in new[:EXTRA_SHOWN]) + (" ..." if len(new) > EXTRA_SHOWN else "")
            raise UserError(f"{spec_text(data_cfg.path)} (the run's data.path) has changed since the run: {len(new)} "
                            f"of its characters are not in the model's vocabulary ({shown}); it is needed to {purpose}")
    return corpus


def validation_text(ckpt, n):
    """(the first n characters of the run's validation split, as training read it, and a line saying
    where they come from)."""
    run = run_corpus(ckpt, "show its validation split (pass --text FILE)")
    text = run.vocab.decode(as_ids(run.val_ids[:n], run.lut).tolist())
    return text, (f"the first {len(text):,} characters of the validation split of "
                  f"{spec_text(ckpt['config']['data']['path'])}")


def initial_model(ckpt, model):
    """The checkpoint's architecture at step 0: built as the trainer builds it, from the run's seed
    (train.seed, rank 0), without touching this process's random state; like model (its device,
    dtype), in eval mode. A fine-tuned run's step 0 is its own fresh init, not the weights it
    started from."""
    # A checkpoint written outside a training run records no config: its seed is then the default's.
    seed = config_mod.build_config(ckpt["config"]).train.seed if ckpt.get("config") else config_mod.TrainConfig.seed
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = CharRNN(**ckpt["model_args"]).to(model.W_hy.dtype).build_kernels()
    return fresh.to(model.W_hy.device).eval()
