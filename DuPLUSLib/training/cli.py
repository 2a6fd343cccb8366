"""The training subcommands of ``duplus`` (``train``, ``finetune``); each only parses and calls the library.

Nothing here imports torch at module level: ``duplus --help`` registers every command, and a
client install without torch must still print it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .evaluate import add_data_arguments

__all__ = ["register"]


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (0 steps would train nothing and say nothing)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    _register_train(sub)
    _register_finetune(sub)


def _register_train(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="train a model from a YAML config (phantoms, MNI152, Decathlon data)")
    train.add_argument("config", help="training config (YAML)")
    train.add_argument("-o", "--run-dir", help="run folder (default: runs/<config name>)")
    train.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its checkpoint")
    train.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    train.add_argument("--steps", type=positive_int, help="override training.steps")
    train.add_argument("--export", metavar="MODEL_DIR",
                       help="only write a model bundle from the run's latest checkpoint (EMA weights) and stop")
    train.add_argument("--prompt-embeddings", metavar="FILE",
                       help="the text encoder's sentence embeddings computed before (a bundle's "
                            "prompt_embeddings.safetensors), for a machine without the encoder installed")
    train.add_argument("--no-progress", action="store_true")
    train.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .loop import export_checkpoint, train

    config = load_config(args.config)
    if args.steps is not None:
        config.training.steps = args.steps
    run_dir = args.run_dir or f"runs/{config.name}"
    if args.export:
        print(json.dumps({"model": str(export_checkpoint(config, run_dir, args.export, args.prompt_embeddings))}))
        return 0
    outcome = train(config, run_dir, resume=args.resume, device=args.device, progress=not args.no_progress,
                    prompt_table=args.prompt_embeddings)
    if outcome.model_dir is not None:
        print(json.dumps({"model": str(outcome.model_dir), "steps": outcome.steps,
                          "final_loss": round(outcome.final_loss, 4), "seconds": round(outcome.seconds, 1)}))
    return 0


def _register_finetune(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("finetune", help="adapt a model to new labelled data with LoRA adapters (or fully)")
    parser.add_argument("--model", help="base model folder (default: the bundled model)")
    add_data_arguments(parser)
    parser.add_argument("-o", "--output", required=True, help="adapter folder (a model folder with --full)")
    parser.add_argument("--lora-rank", type=int, default=8, help="rank of the low-rank updates (default 8)")
    parser.add_argument("--lora-alpha", type=float, help="LoRA alpha (default 2 x rank)")
    parser.add_argument("--text-lora-rank", type=int, default=0,
                        help="also put peft LoRA of this rank on the text encoder (default 0: off)")
    parser.add_argument("--no-norms", action="store_true", help="keep the normalisation affines frozen")
    parser.add_argument("--full", action="store_true", help="train every parameter and write a full model")
    parser.add_argument("--steps", type=positive_int, default=200)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", help="adapter name (default: the output folder's name)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.set_defaults(run=_run_finetune)


def _run_finetune(args: argparse.Namespace) -> int:
    from ..bundle import load_bundle
    from ..errors import OutputPathError
    from .evaluate import parse_data_spec
    from .finetune import FinetuneSettings, finetune, prepare_cases, save_result

    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise OutputPathError(f"'{output}' is a file; -o names the folder the adapter (or model) is written into")
    if output.exists() and any(output.iterdir()) and not args.overwrite:
        raise OutputPathError(f"'{output}' already exists and is not empty; pass --overwrite to replace it")
    sources = [parse_data_spec(d, args.mapping) for d in args.data]
    bundle = load_bundle(args.model)
    settings = FinetuneSettings(
        rank=args.lora_rank, alpha=args.lora_alpha, norms=not args.no_norms, text_lora_rank=args.text_lora_rank,
        full=args.full, steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
        seed=args.seed,
    )
    cases = prepare_cases(bundle, sources)
    from tqdm import tqdm

    bar = tqdm(total=settings.steps, desc="fine-tuning", unit="step", dynamic_ncols=True)

    def on_step(step: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")

    try:
        result = finetune(bundle, cases, settings, device=args.device, name=args.name or output.name, on_step=on_step)
    finally:
        bar.close()
    written = save_result(result, output)
    inherited = list(bundle.config.inference.largest_component)
    if inherited:  # chosen on the base model's validation data, not on these cases: say so
        print(f"note: the {'model' if args.full else 'adapted model'} keeps the base model's post-processing: only the "
              f"largest part of {', '.join(inherited)}. It was chosen for the base model; to choose it for the new data, "
              "run experiments/choose_postprocessing.py on held-out cases of it.", file=sys.stderr)
    print(json.dumps({"output": str(written), "kind": "model" if args.full else "adapter", "cases": len(cases),
                      "steps": settings.steps, "final_loss": round(result.losses[-1], 4),
                      "seconds": round(result.seconds, 1), "largest_component": inherited, **result.trainable}))
    return 0
