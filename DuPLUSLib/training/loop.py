"""``duplus train``: from a config to a model bundle, resumable, on one process or under torchrun.

The run folder holds everything a run needs to continue or be audited:

    run/
      run.json            the config and its fingerprint (another config here is refused)
      cases/              the training cases on the model grid (.npz)
      checkpoint/         latest weights, EMA weights, optimiser moments, sampler state (safetensors + JSON)
      metrics.csv         step, loss, dice, bce, learning rate, seconds
      model/              the final bundle (EMA weights); with training.export_every, the latest one
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable

import torch

from ..bundle import BundleConfig, InferenceSettings, ModelBundle
from ..devices import autocast_dtype, select_device
from ..errors import DuPLUSError
from ..network import DuPLUSNet, NetworkConfig
from ..ontology import load_ontology
from ..text import PromptEmbeddings
from .config import TrainingConfig
from .data import Batch, PatchSampler, batch_stream, build_cases, case_specs
from .losses import partial_label_loss
from .prompt_codes import build_prompt_codes

__all__ = ["RunFolderError", "export_checkpoint", "train", "training_step", "TrainingOutcome"]


class RunFolderError(DuPLUSError):
    """A run folder that holds another run, or a resume with nothing to resume."""


@dataclass
class TrainingOutcome:
    model_dir: Path | None
    steps: int
    final_loss: float
    seconds: float
    trainable_parameters: int


@dataclass
class _Distributed:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def _init_distributed(device: torch.device) -> _Distributed:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Distributed()
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return _Distributed(torch.distributed.get_rank(), world)


def train(
    config: TrainingConfig,
    run_dir: str | os.PathLike[str],
    resume: bool = False,
    device: str = "auto",
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
    prompt_table: str | os.PathLike[str] | None = None,
) -> TrainingOutcome:
    """Train per ``config`` into ``run_dir``; with ``resume`` continue from its last checkpoint.

    ``prompt_table``: precomputed sentence embeddings of the config's text encoder (a bundle's
    ``prompt_embeddings.safetensors``), for a machine that has no text encoder installed.
    """
    run_dir = Path(run_dir)
    torch_device = select_device(device)
    dist = _init_distributed(torch_device)
    if torch_device.type == "cuda" and dist.world > 1:
        torch_device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if config.training.threads:
        torch.set_num_threads(config.training.threads)
    lock = _lock_run_folder(run_dir) if dist.main else None
    try:
        return _run(config, run_dir, resume, torch_device, dist, progress, on_step, prompt_table)
    finally:  # also on an error: a console that keeps the traceback must not keep the folder locked
        if lock is not None:
            lock.close()


def _run(
    config: TrainingConfig,
    run_dir: Path,
    resume: bool,
    torch_device: torch.device,
    dist: _Distributed,
    progress: bool,
    on_step: Callable[[int, float], None] | None,
    prompt_table: str | os.PathLike[str] | None,
) -> TrainingOutcome:
    _claim_run_folder(run_dir, config, resume, dist)
    torch.manual_seed(config.seed)
    ontology = load_ontology()
    settings = InferenceSettings.from_dict(config.inference)
    codes, encoder_entry = build_prompt_codes(ontology, config.prompts.code, config.text_encoder, prompt_table)
    network_config = NetworkConfig.from_dict({**config.network, "text_dim": codes.dim})
    network = DuPLUSNet(network_config).to(torch_device)
    if config.initial_model and not resume:
        _warm_start(network, config.initial_model)
    network.set_prompt_statistics(codes.get(codes.texts).to(torch_device))

    specs = case_specs(config.datasets, config.seed, ontology)
    if dist.main:
        cases = build_cases(specs, run_dir / "cases", settings.spacing, settings.normalisation,
                            workers=config.training.data_workers, progress=_case_progress(progress))
    dist.barrier()
    if not dist.main:
        cases = build_cases(specs, run_dir / "cases", settings.spacing, settings.normalisation, workers=1)
    sampler = PatchSampler(
        cases,
        [d.weight for d in config.datasets],
        settings.patch_size,
        seed=config.seed * 7919 + dist.rank,
        foreground_fraction=config.training.foreground_fraction,
        max_prompts=config.training.max_prompts,
        paraphrases=config.prompts.paraphrases,
        augment=config.training.augment,
        ontology=ontology,
    )

    opt = config.training
    optimiser = torch.optim.AdamW(network.parameters(), lr=opt.learning_rate, weight_decay=opt.weight_decay)
    ema = {name: p.detach().clone() for name, p in network.state_dict().items()}
    start_step = 0
    if resume:
        start_step = _load_checkpoint(run_dir / "checkpoint", network, ema, optimiser, sampler)
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model: torch.nn.Module = DistributedDataParallel(network, find_unused_parameters=True)
    else:
        model = network
    autocast = autocast_dtype(torch_device, opt.precision)

    log = _MetricsLog(run_dir / "metrics.csv", start_step) if dist.main else None
    bar = None
    if progress and dist.main:
        from tqdm import tqdm

        bar = tqdm(total=opt.steps, initial=start_step, desc="training", unit="step", dynamic_ncols=True)
    batches = batch_stream(sampler, opt.batch_size, opt.loader_workers,
                           seed=(config.seed * 7919 + dist.rank) * 100_003 + start_step)
    started = time.perf_counter()
    loss_value = math.nan
    network.train()
    try:
        for step in range(start_step, opt.steps):
            for group in optimiser.param_groups:
                group["lr"] = _learning_rate(step, opt.steps, opt.learning_rate, opt.warmup_steps)
            batch = next(batches)
            loss, parts = training_step(model, batch, codes, torch_device, autocast, opt)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(network.parameters(), 12.0)
            optimiser.step()
            _update_ema(ema, network, opt.ema_decay if step > opt.warmup_steps else 0.0)
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"loss became {loss_value} at step {step + 1}; lower the learning rate")
            done = step + 1
            if on_step:
                on_step(done, loss_value)
            if log and (done % opt.log_every == 0 or done == opt.steps):
                log.write(done, loss_value, parts, optimiser.param_groups[0]["lr"], time.perf_counter() - started)
            if bar:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.3f}", dice=f"{1 - parts['dice']:.3f}")
            if dist.main and (done % opt.checkpoint_every == 0 or done == opt.steps):
                _save_checkpoint(run_dir / "checkpoint", network, ema, optimiser, sampler, done)
            if dist.main and opt.export_every and done % opt.export_every == 0 and done < opt.steps:
                _export_latest(run_dir, config, network_config, settings, encoder_entry, codes, ema, done, math.nan)
    finally:  # also on Ctrl+C or an error: the loader's worker processes stop with the run
        batches.close()
    if bar:
        bar.close()
    seconds = time.perf_counter() - started
    model_dir = None
    if dist.main:
        model_dir = _export_latest(run_dir, config, network_config, settings, encoder_entry, codes, ema,
                                   opt.steps, seconds)
    dist.barrier()
    return TrainingOutcome(model_dir, opt.steps, loss_value, seconds, network.count_parameters(True))


def export_checkpoint(
    config: TrainingConfig,
    run_dir: str | os.PathLike[str],
    output: str | os.PathLike[str],
    prompt_table: str | os.PathLike[str] | None = None,
) -> Path:
    """A model bundle from the EMA weights of a run's latest checkpoint, while the run goes on or
    after it stopped; ``prompt_table`` as for :func:`train`."""
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    state_file = run_dir / "checkpoint" / "state.safetensors"
    if not state_file.is_file():
        raise RunFolderError(f"no checkpoint in '{run_dir}' to export")
    _claim_run_folder(run_dir, config, resume=True, dist=_Distributed(), write=False)
    ontology = load_ontology()
    codes, encoder_entry = build_prompt_codes(ontology, config.prompts.code, config.text_encoder, prompt_table)
    network_config = NetworkConfig.from_dict({**config.network, "text_dim": codes.dim})
    tensors = load_file(str(state_file))
    ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
    step = json.loads((run_dir / "checkpoint" / "state.json").read_text(encoding="utf-8"))["step"]
    settings = InferenceSettings.from_dict(config.inference)
    seconds = _seconds_at_step(run_dir / "metrics.csv", step)
    return _save_model(Path(output), config, network_config, settings, encoder_entry, codes, ema, step, seconds)


def _seconds_at_step(metrics: Path, step: int) -> float:
    """The training time ``metrics.csv`` logged at ``step`` (NaN if it logged none there), so a
    finished run exported again, say with post-processing added, keeps its training time."""
    rows = _MetricsLog.rows_up_to(metrics, step)
    return float(rows[-1][-1]) if rows and int(rows[-1][0]) == step else float("nan")


def _warm_start(network: DuPLUSNet, model_dir: str) -> None:
    """Start from another bundle's weights (verified by sha256); its architecture must match."""
    from ..bundle import load_bundle

    if not Path(model_dir).is_dir():
        raise RunFolderError(
            f"initial_model '{model_dir}' does not exist; train that model first (the config's comments "
            "say with which command) or point initial_model at a model folder"
        )
    source = load_bundle(model_dir)
    if source.network.config.to_dict() != network.config.to_dict():
        raise RunFolderError(f"initial_model '{model_dir}' has another network configuration than this run")
    missing, unexpected = network.load_state_dict(source.network.state_dict(), strict=False)
    if unexpected or set(missing) - {"prompt_centre", "prompt_scale"}:  # older bundles lack the two buffers
        raise RunFolderError(f"initial_model '{model_dir}' does not fit this network: {(missing or unexpected)[:3]}")


# -------------------------------------------------------------------------------- one step
def training_step(model, batch: Batch, codes: PromptEmbeddings, device, autocast, opt):
    """Forward and loss for one batch; shared by ``train`` and ``finetune`` so both optimise the same thing."""
    images = batch.images.to(device)
    contexts = codes.get(batch.contexts).to(device)
    flat = [t for texts in batch.targets_text for t in texts]
    known = [t if t else batch.contexts[0] for t in flat]  # padding rows get any vector; weight 0
    targets = codes.get(known).reshape(len(batch.targets_text), -1, codes.dim).to(device)
    with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
        logits = model(images, batch.modalities, contexts, targets)
    return partial_label_loss(logits, batch.masks.to(device), batch.weights.to(device),
                              opt.dice_weight, opt.bce_weight)


def _learning_rate(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def _update_ema(ema: dict[str, torch.Tensor], network: torch.nn.Module, decay: float) -> None:
    for name, value in network.state_dict().items():
        if value.is_floating_point():
            ema[name].mul_(decay).add_(value.detach(), alpha=1 - decay)
        else:
            ema[name].copy_(value)


# ------------------------------------------------------------------------- run folder state
def _lock_run_folder(run_dir: Path) -> IO[str]:
    """Hold the run folder for this process: two runs in one folder would overwrite each other's
    checkpoints. The lock is the operating system's, so it ends with the process, even a killed one."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / ".lock", "a+", encoding="utf-8")
    try:
        if os.name == "nt":
            import msvcrt

            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RunFolderError(
            f"'{run_dir}' is in use by another training run ({holder}); wait for it to finish or choose another folder"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    return handle


def _claim_run_folder(
    run_dir: Path, config: TrainingConfig, resume: bool, dist: _Distributed, write: bool = True
) -> None:
    record = run_dir / "run.json"
    if record.exists():
        previous = json.loads(record.read_text(encoding="utf-8"))
        if previous.get("fingerprint") != config.fingerprint():
            raise RunFolderError(
                f"'{run_dir}' holds a different run ({previous.get('name')}, fingerprint "
                f"{previous.get('fingerprint')}); choose another folder"
            )
        if not resume and (run_dir / "checkpoint").exists():
            raise RunFolderError(f"'{run_dir}' already holds this run; pass --resume to continue it")
    elif resume:
        raise RunFolderError(f"nothing to resume in '{run_dir}'")
    if dist.main and write:
        run_dir.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"name": config.name, "fingerprint": config.fingerprint(),
                                      "config": config.to_dict()}, indent=2), encoding="utf-8")
    dist.barrier()


def _save_checkpoint(folder: Path, network, ema, optimiser, sampler: PatchSampler, step: int) -> None:
    from ..imageio import save_tensors

    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in network.state_dict().items()}
    tensors |= {f"ema.{k}": v.contiguous().cpu() for k, v in ema.items()}
    for index, state in optimiser.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value).contiguous().cpu()
    tensors["rng.torch"] = torch.get_rng_state()
    partial = _partial_of(folder)
    save_tensors(tensors, partial / "state.safetensors")
    (partial / "state.json").write_text(json.dumps({"step": step, "sampler": sampler.state()}), encoding="utf-8")
    _swap_in(partial, folder)


def _partial_of(folder: Path) -> Path:
    """An empty ``folder.partial`` beside ``folder``, to write into before :func:`_swap_in`."""
    import shutil

    partial = folder.with_name(folder.name + ".partial")
    if partial.exists():  # left by a run killed while writing
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    return partial


def _swap_in(partial: Path, folder: Path) -> None:
    """Replace ``folder`` with the fully written ``partial``: a run killed at any moment leaves one
    whole folder (and perhaps a partial one, which the next write clears)."""
    import shutil

    if folder.exists():
        shutil.rmtree(folder)
    partial.rename(folder)


def _load_checkpoint(folder: Path, network, ema, optimiser, sampler: PatchSampler) -> int:
    from safetensors.torch import load_file

    if not (folder / "state.safetensors").is_file():
        raise RunFolderError(f"no checkpoint in '{folder.parent}' to resume from")
    tensors = load_file(str(folder / "state.safetensors"))
    state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    network.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    for key in ema:
        ema[key].copy_(tensors[f"ema.{key}"])
    optimiser_state = optimiser.state_dict()
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            optimiser_state["state"].setdefault(int(index), {})[key] = value
    optimiser.load_state_dict(optimiser_state)
    torch.set_rng_state(tensors["rng.torch"])
    sampler.set_state(state["sampler"])
    return int(state["step"])


def _save_model(folder, config: TrainingConfig, network_config, settings, encoder_entry, codes, ema, steps, seconds):
    network = DuPLUSNet(network_config)
    network.load_state_dict(ema)
    bundle_config = BundleConfig(
        name=config.name,
        network=network_config,
        inference=settings,
        ontology_version=load_ontology().version,
        text_encoder=encoder_entry,
        description=config.description,
        training={
            "config_fingerprint": config.fingerprint(),
            "steps": steps,
            "seconds": round(seconds, 1) if math.isfinite(seconds) else None,  # None: exported mid-run
            "datasets": [d.__dict__ for d in config.datasets],
            "prompt_code": config.prompts.code,
            "torch": torch.__version__,
        },
    )
    bundle = ModelBundle(None, bundle_config, network, codes, load_ontology())
    return bundle.save(folder)


def _export_latest(run_dir: Path, config, network_config, settings, encoder_entry, codes, ema, step: int,
                   seconds: float) -> Path:
    """``run/model`` replaced by the EMA bundle of ``step``, whole or not at all: a run stopped from
    outside (a time-limited GPU lease) still leaves a usable bundle, 13 MB against the checkpoint's
    100. ``seconds`` is NaN for a bundle written mid-run."""
    partial = _partial_of(run_dir / "model")
    _save_model(partial, config, network_config, settings, encoder_entry, codes, ema, step, seconds)
    _swap_in(partial, run_dir / "model")
    return run_dir / "model"


class _MetricsLog:
    """``metrics.csv``: one row per logged step, ``seconds`` of training counted across resumes.

    A run stopped between checkpoints has logged steps its checkpoint does not hold; a resume
    trains them again, so their rows are dropped first and each step appears once.
    """

    HEADER = ["step", "loss", "dice_loss", "bce", "learning_rate", "seconds"]

    def __init__(self, path: Path, resume_step: int = 0):
        self.path = path
        self.seconds_before = 0.0
        rows: list[list[str]] = []
        if resume_step > 0:
            rows = self.rows_up_to(path, resume_step)
            self.seconds_before = float(rows[-1][-1]) if rows else 0.0
        if not path.exists() or resume_step > 0:
            with path.open("w", newline="", encoding="utf-8") as handle:
                csv.writer(handle).writerows([self.HEADER, *rows])

    @staticmethod
    def rows_up_to(path: Path, step: int) -> list[list[str]]:
        """The logged rows of steps up to ``step`` (none when there is no log yet)."""
        if not path.exists():
            return []
        with path.open(newline="", encoding="utf-8") as handle:
            return [row for row in list(csv.reader(handle))[1:] if row and int(row[0]) <= step]

    def write(self, step: int, loss: float, parts: dict[str, float], lr: float, seconds: float) -> None:
        seconds += self.seconds_before
        with self.path.open("a", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerow(
                [step, f"{loss:.5f}", f"{parts['dice']:.5f}", f"{parts['bce']:.5f}", f"{lr:.6g}", f"{seconds:.1f}"]
            )


def _case_progress(enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    bar = tqdm(desc="building cases", unit="case")

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()
        if done == total:
            bar.close()

    return update
