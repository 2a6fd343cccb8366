"""The training subcommands of ``duplus``; each only parses and calls the library."""

from __future__ import annotations

import argparse
import json

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="train a model from a YAML config (phantoms, MNI152, Decathlon data)")
    train.add_argument("config", help="training config (YAML)")
    train.add_argument("-o", "--run-dir", help="run folder (default: runs/<config name>)")
    train.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its checkpoint")
    train.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    train.add_argument("--steps", type=int, help="override training.steps")
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
    if args.steps:
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
