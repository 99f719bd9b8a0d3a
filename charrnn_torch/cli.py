"""Command lines for training, sampling and sweeps: argument parsing and error reporting only.

Each ``*_main(argv)`` returns an exit status. Every mistake in what the user
gave us is a ``UserError``, printed as one line ``error: ...`` on stderr with
exit status 2 and no traceback.
"""
import argparse
import os
import sys
from pathlib import Path

from .errors import UserError

PACKAGE_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(message)


def _report(fn, argv):
    try:
        return fn(argv)
    except UserError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `... | head` closed stdout: not an error
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0


def _find_config(name):
    from .config import resolve_config_path
    p = resolve_config_path(name, "configs")
    if not p.exists() and PACKAGE_CONFIGS.is_dir():
        alt = resolve_config_path(name, PACKAGE_CONFIGS)
        if alt.exists():
            return alt
    return p


# ---------------------------------------------------------------- train

def _dist_from_env(env):
    from .trainer import DistInfo
    return DistInfo(rank=int(env.get("RANK", 0)), world_size=int(env.get("WORLD_SIZE", 1)),
                    local_rank=int(env.get("LOCAL_RANK", 0)))


def _hooks_from_env(env):
    from . import checkpoint
    from .trainer import DebugHooks
    nan = env.get("CHARRNN_TEST_NAN_STEPS", "")
    return DebugHooks(interrupt_at_step=int(env.get("CHARRNN_TEST_INTERRUPT_AT_STEP", 0) or 0),
                     pause_mid_write=float(env.get(checkpoint.PAUSE_ENV, 0) or 0),
                     nonfinite_steps={int(s) for s in nan.split(",") if s.strip()})


# What a resumed run may change: everything but these, which would change the
# architecture, the data, its layout in streams, or the meaning of the saved state.
FROZEN_ON_RESUME = ("out_dir", "data.", "model.hidden_size", "model.num_layers", "train.optimizer",
                    "train.dtype", "train.batch_size", "train.seq_len", "train.stateful")


def _train(argv):
    from . import checkpoint, config as config_mod

    p = _Parser(prog="charrnn-train", description="Train a character-level RNN from a YAML config.")
    p.add_argument("--config", default="shakespeare.yaml",
                   help="a YAML file, or a bare name looked up in configs/ (default: shakespeare.yaml)")
    p.add_argument("--resume", metavar="RUN", help="continue a run: its directory or a checkpoint file")
    p.add_argument("--force", action="store_true", help="start over in an out_dir that holds a run")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. train.lr=3e-3 device=cpu")
    args = p.parse_args(argv)

    keys = config_mod.override_keys(args.overrides)
    resume = resume_dir = None
    if args.resume:
        ckpt_path = checkpoint.resolve(args.resume, names=("ckpt.pt", "best.pt"))
        resume = checkpoint.load(ckpt_path)
        resume_dir = ckpt_path.parent
        cfg = config_mod.build_config(resume["config"], args.overrides)
        stored = config_mod.flatten(resume["config"])
        for key in keys:
            frozen = any(key == f or (f.endswith(".") and key.startswith(f)) for f in FROZEN_ON_RESUME)
            if frozen and config_mod.eval_key(cfg, key) != stored.get(key):
                raise UserError(f"cannot change {key} when resuming (the checkpoint has {stored.get(key)!r}); "
                                f"start a new run instead")
    else:
        cfg_path = _find_config(args.config)
        cfg = config_mod.build_config(config_mod.read_yaml(cfg_path), args.overrides)

    if args.print_config:
        sys.stdout.write(config_mod.dump_yaml(cfg))
        return 0

    from .runtime import retain_freed_memory
    from .trainer import Interrupted, TrainingDiverged, train
    retain_freed_memory()
    env = os.environ
    dist_info = _dist_from_env(env)
    if dist_info.world_size > 1:
        _init_distributed(cfg, dist_info)
    try:
        summary = train(cfg, out_dir_explicit="out_dir" in keys, force=args.force, resume=resume,
                        resume_dir=resume_dir, dist_info=dist_info, progress=not args.no_progress,
                        hooks=_hooks_from_env(env),
                        log=_console_log if dist_info.is_main else (lambda *a, **k: None))
        if dist_info.world_size > 1:
            # Rank 0 finishes last (hparams, final flush) and hosts the rendezvous store: a rank
            # that tears its process group down first can abort on the store's lost connection.
            import torch.distributed as dist
            dist.barrier()
    except Interrupted as e:
        if dist_info.is_main:
            print(f"interrupted at step {e.step}: checkpoint saved to {Path(e.out_dir) / 'ckpt.pt'}\n"
                  f"resume with: python scripts/train.py --resume {e.out_dir}", file=sys.stderr)
        return e.exit_code
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if dist_info.world_size > 1:
            import torch.distributed as dist
            if dist.is_initialized():
                dist.destroy_process_group()
    if dist_info.is_main:
        print(f"done: {summary['step']} steps, val loss {summary['val_loss']:.4f} "
              f"(bpc {summary['val_loss'] / 0.6931471805599453:.4f}), best {summary['best_val']:.4f}; "
              f"run in {summary['out_dir']}")
    return 0


def _console_log(line):
    from tqdm import tqdm
    tqdm.write(line)  # above the progress bar, not through it
    sys.stdout.flush()


def _init_distributed(cfg, dist_info):
    import torch
    import torch.distributed as dist
    cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
    dist.init_process_group(backend="nccl" if cuda else "gloo", init_method="env://",
                            rank=dist_info.rank, world_size=dist_info.world_size)


def train_main(argv=None):
    return _report(_train, sys.argv[1:] if argv is None else argv)


# ---------------------------------------------------------------- sample

def _load_model(path, device_name):
    """(model, vocab, checkpoint dict) from a checkpoint file or run directory."""
    from . import checkpoint
    from .data import Vocab
    from .model import CharRNN
    from .trainer import resolve_device

    ckpt = checkpoint.load(checkpoint.resolve(path))
    device = resolve_device(device_name)
    try:
        model = CharRNN(**ckpt["model_args"])
        model.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, RuntimeError) as e:
        raise UserError(f"checkpoint {path} does not hold a CharRNN ({' '.join(str(e).split())[:200]})") from None
    model.to(device=device, dtype=next(iter(ckpt["model"].values())).dtype).eval()
    return model, Vocab(ckpt["vocab"]), ckpt


def _sample(argv):
    p = _Parser(prog="charrnn-sample", description="Generate text from a trained checkpoint, or score a file.")
    p.add_argument("--checkpoint", required=True, help="a .pt file, or a run directory (best.pt, else ckpt.pt)")
    p.add_argument("--prime", default=None, help="text to condition on (default: a newline)")
    p.add_argument("--length", type=int, default=500, help="characters to generate after the prime")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=0, help="sample only from the k most likely (0: all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1]")
    p.add_argument("--greedy", action="store_true", help="always take the most likely character")
    p.add_argument("--beam-width", type=int, default=0, help="beam search with this many beams")
    p.add_argument("--num-samples", type=int, default=1, help="independent samples, drawn in one batch")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default="cpu", help="auto | cpu | cuda | cuda:N (default cpu)")
    p.add_argument("--out", default=None, help="also write the text to this file")
    p.add_argument("--score", metavar="FILE", default=None, help="print the model's loss and bits/char on FILE")
    args = p.parse_args(argv)

    if args.temperature <= 0:
        raise UserError(f"--temperature must be > 0, got {args.temperature}")
    if args.top_k < 0:
        raise UserError(f"--top-k must be >= 0, got {args.top_k}")
    if not 0 < args.top_p <= 1:
        raise UserError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.length < 0:
        raise UserError(f"--length must be >= 0, got {args.length}")
    if args.num_samples < 1:
        raise UserError(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.beam_width < 0:
        raise UserError(f"--beam-width must be >= 0, got {args.beam_width}")
    if args.device not in ("auto", "cpu", "cuda") and not (args.device.startswith("cuda:") and args.device[5:].isdigit()):
        raise UserError(f"--device must be auto, cpu, cuda or cuda:N, got {args.device!r}")

    import torch

    from . import sample as S
    from .data import read_corpus

    score_text = read_corpus(args.score) if args.score else None
    model, vocab, ckpt = _load_model(args.checkpoint, args.device)

    if score_text is not None:
        r = S.score(model, vocab, score_text)
        print(f"loss {r['loss']:.4f} nats/char | {r['bpc']:.4f} bits/char | {r['chars']} characters scored")
        if r["unknown_chars"]:
            print(f"{r['unknown_chars']} characters not in the vocabulary were skipped: "
                  f"{', '.join(repr(c) for c in r['unknown_set'])}")
        return 0

    prime = S.default_prime(vocab, ckpt.get("char_counts")) if args.prime is None else args.prime
    S.check_prime(vocab, prime)
    generator = torch.Generator()
    if args.seed is not None:
        generator.manual_seed(args.seed)
    else:
        generator.seed()

    out_file = open(args.out, "w", encoding="utf-8") if args.out else None
    try:
        def emit(text):
            sys.stdout.write(text)
            sys.stdout.flush()
            if out_file:
                out_file.write(text)

        if args.beam_width:
            text, logp = S.beam_search(model, vocab, prime, args.length, args.beam_width)
            emit(text + "\n")
            print(f"log-probability {logp:.4f} nats ({-logp / max(args.length, 1):.4f} nats/char)", file=sys.stderr)
        elif args.num_samples == 1:
            emit(prime)
            S.generate(model, vocab, prime, args.length, args.temperature, args.top_k, args.top_p,
                       generator=generator, greedy=args.greedy, on_text=emit)
            emit("\n")
        else:
            texts = S.generate_batch(model, vocab, prime, args.length, args.num_samples, args.temperature,
                                     args.top_k, args.top_p, generator=generator, greedy=args.greedy)
            for i, text in enumerate(texts):
                emit((f"\n----- sample {i + 1} -----\n" if i else "") + text + "\n")
    finally:
        if out_file:
            out_file.close()
    return 0


def sample_main(argv=None):
    return _report(_sample, sys.argv[1:] if argv is None else argv)


# ---------------------------------------------------------------- sweep

def _sweep(argv):
    from .sweep import format_rows, run_sweep

    p = _Parser(prog="charrnn-sweep", description="Train one run per combination of a grid.")
    p.add_argument("--config", default="shakespeare.yaml")
    p.add_argument("--grid", nargs="+", required=True, metavar="key=v1,v2",
                   help="e.g. --grid train.lr=1e-3,3e-3 model.hidden_size=256,512")
    p.add_argument("--parallel", type=int, default=1, help="runs at a time (default 1)")
    p.add_argument("--sweep-dir", default=None, help="default: runs/sweep-<config name>")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every run")
    args = p.parse_args(argv)
    # argparse hands key=value overrides that follow the grid to --grid too: an entry
    # with a comma-separated list is an axis, one with a single value an override.
    grid = [g for g in args.grid if "," in g.partition("=")[2]]
    overrides = [g for g in args.grid if g not in grid] + args.overrides
    if not grid:
        raise UserError("--grid needs at least one key=v1,v2,... entry")
    if args.parallel < 1:
        raise UserError(f"--parallel must be >= 1, got {args.parallel}")
    sweep_dir, fields, rows = run_sweep(_find_config(args.config), grid, overrides, args.sweep_dir,
                                        args.parallel)
    print()
    print(format_rows(fields, rows))
    print(f"\nsummary: {sweep_dir / 'summary.csv'}; compare runs with: tensorboard --logdir {sweep_dir}")
    return 1 if any(r["status"].startswith("failed") for r in rows) else 0


def sweep_main(argv=None):
    return _report(_sweep, sys.argv[1:] if argv is None else argv)
