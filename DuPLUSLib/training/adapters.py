"""Low-rank adapters: adapt a trained model to a new centre or structure by training ~1% of it.

What trains (everything else, above all the convolutions of the backbone, stays frozen):

* **LoRA on the prompt pathways**: every ``nn.Linear`` of the context conditioning generators
  (``ContextConditioning.generator``: how T1 modulates each block) and of the target head
  (``TargetPromptHead.text_projection`` and ``controller``: how T2 becomes the dynamic convs).
  Each becomes ``W x + (alpha / r) B A x`` with ``A`` random and ``B`` zero, so the adapted model
  starts exactly as the base model. These layers are where DuPLUS turns text into behaviour, so a
  low-rank change there re-steers the frozen backbone for a new scanner or structure.
* **Normalisation affines** (InstanceNorm and GroupNorm scale and shift; on by default): a few
  thousand numbers that let the adapter re-scale features whose statistics a new scanner changes,
  which LoRA on linear layers alone cannot reach. ``norms=False`` turns them off.
* Optionally **LoRA (peft) on the text encoder** (see :mod:`.finetune`); then the prompt-embedding
  cache is recomputed with the adapted encoder and stored with the adapter.

An adapter folder holds ``adapter.safetensors`` (A and B of each target, the norm values and, with
a text LoRA, the new prompt embeddings) and ``adapter.json`` (base weights sha256, rank, alpha,
targets, trainable fraction, file sha256). :func:`load_adapter` refuses a base it was not trained on.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..bundle import ModelBundle, load_bundle, sha256_of
from ..errors import ModelBundleError
from ..network import ContextConditioning, DuPLUSNet, TargetPromptHead
from ..text import PromptEmbeddings

__all__ = [
    "ADAPTER_FORMAT",
    "AdapterInfo",
    "LoRALinear",
    "add_adapters",
    "adapter_state",
    "base_sha256",
    "load_adapter",
    "load_bundle_with_adapter",
    "merge_adapters",
    "save_adapter",
    "trainable_summary",
]

ADAPTER_FORMAT = "duplus-adapter/1"
ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter.json"
EMBEDDINGS_KEY = "prompt_embeddings"


class LoRALinear(nn.Module):
    """``base(x) + scaling * B(A(x))`` around a frozen ``nn.Linear``; B starts at zero (identity)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, not {rank}")
        self.base = base
        self.base.requires_grad_(False)
        self.rank = rank
        self.scaling = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = nn.functional.linear(nn.functional.linear(x, self.lora_a.to(x.dtype)), self.lora_b.to(x.dtype))
        return self.base(x) + self.scaling * update

    def merged(self) -> nn.Linear:
        """A plain Linear with the update folded in: no cost at inference."""
        linear = copy.deepcopy(self.base)
        with torch.no_grad():
            linear.weight += self.scaling * (self.lora_b @ self.lora_a).to(linear.weight.dtype)
        linear.requires_grad_(True)
        return linear


@dataclass
class AdapterInfo:
    """What ``adapter.json`` records and :func:`load_adapter` checks."""

    name: str
    base_sha256: str
    rank: int
    alpha: float
    targets: list[str]
    norms: list[str] = field(default_factory=list)
    text_lora: dict | None = None  # {"rank": r, "alpha": a} when the text encoder was adapted
    trainable_parameters: int = 0
    base_parameters: int = 0
    trainable_fraction: float = 0.0
    training: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)
    format: str = ADAPTER_FORMAT

    def to_dict(self) -> dict:
        return dict(self.__dict__)


# ------------------------------------------------------------------------------- attach, count
def adapter_target_names(network: DuPLUSNet) -> list[str]:
    """Qualified names of the Linear layers LoRA wraps: conditioning generators and head projections."""
    names = []
    for name, module in network.named_modules():
        if isinstance(module, ContextConditioning):
            names += [f"{name}.generator.{i}" for i, m in enumerate(module.generator) if isinstance(m, nn.Linear)]
        elif isinstance(module, TargetPromptHead):
            names += [f"{name}.text_projection.{i}" for i, m in enumerate(module.text_projection)
                      if isinstance(m, nn.Linear)]
            names.append(f"{name}.controller")
    return names


def norm_parameter_names(network: nn.Module) -> list[str]:
    """Names of the affine parameters of every InstanceNorm and GroupNorm."""
    names = []
    for name, module in network.named_modules():
        if isinstance(module, (nn.InstanceNorm3d, nn.GroupNorm)) and module.affine:
            names += [f"{name}.weight", f"{name}.bias"]
    return names


def add_adapters(network: DuPLUSNet, rank: int, alpha: float | None = None, norms: bool = True) -> list[str]:
    """Freeze ``network`` and wrap its prompt-pathway Linears in :class:`LoRALinear` (in place).

    Returns the wrapped names. ``alpha`` defaults to ``2 * rank`` (scaling 2), which keeps the update
    size independent of the rank chosen.
    """
    alpha = float(alpha if alpha is not None else 2 * rank)
    network.requires_grad_(False)
    targets = adapter_target_names(network)
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = network.get_submodule(parent_name)
        setattr(parent, child, LoRALinear(getattr(parent, child), rank, alpha))
    if norms:
        parameters = dict(network.named_parameters())
        for name in norm_parameter_names(network):
            parameters[name].requires_grad_(True)
    return targets


def trainable_summary(parameters: Sequence[nn.Parameter], base_parameters: int) -> dict:
    """How many parameters train (``parameters``), against the base model's count, and their ratio."""
    trainable = sum(p.numel() for p in parameters)
    return {"trainable_parameters": trainable, "base_parameters": base_parameters,
            "trainable_fraction": trainable / max(base_parameters, 1)}


def adapter_state(network: nn.Module, norms: bool = True) -> dict[str, torch.Tensor]:
    """The tensors an adapter file stores: LoRA A/B of each wrapped layer and the norm affines."""
    state: dict[str, torch.Tensor] = {}
    for name, module in network.named_modules():
        if isinstance(module, LoRALinear):
            state[f"lora.{name}.a"] = module.lora_a.detach().float().cpu().contiguous()
            state[f"lora.{name}.b"] = module.lora_b.detach().float().cpu().contiguous()
    if norms:
        parameters = dict(network.named_parameters())
        for name in norm_parameter_names(network):
            state[f"norm.{name}"] = parameters[name].detach().float().cpu().contiguous()
    return state


def merge_adapters(network: nn.Module) -> nn.Module:
    """Replace every :class:`LoRALinear` by its merged Linear (in place); returns ``network``."""
    for name, module in list(network.named_modules()):
        if isinstance(module, LoRALinear):
            parent_name, _, child = name.rpartition(".")
            setattr(network.get_submodule(parent_name), child, module.merged())
    return network


# ------------------------------------------------------------------------------------ on disk
def base_sha256(bundle: ModelBundle) -> str:
    """The identity of a base model: the sha256 of its weights file, as its config.json records it."""
    entry = bundle.config.files.get("weights", {})
    if "sha256" not in entry:
        raise ModelBundleError("the base model was never saved; save it (ModelBundle.save) before adapting it")
    return entry["sha256"]


def save_adapter(
    folder: str | os.PathLike[str],
    network: nn.Module,
    info: AdapterInfo,
    embeddings: PromptEmbeddings | None = None,
) -> Path:
    """Write ``adapter.safetensors`` and ``adapter.json`` (with the weights' sha256) into ``folder``."""
    from ..imageio import save_tensors

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = adapter_state(network, norms=bool(info.norms))
    metadata = {"format": ADAPTER_FORMAT}
    if embeddings is not None:
        tensors[EMBEDDINGS_KEY] = embeddings.get(embeddings.texts).contiguous()
        metadata["texts"] = json.dumps(embeddings.texts)
    partial = folder / (ADAPTER_WEIGHTS + ".partial")
    save_tensors(tensors, partial, metadata=metadata)
    os.replace(partial, folder / ADAPTER_WEIGHTS)
    info.files = {"weights": {"path": ADAPTER_WEIGHTS, "sha256": sha256_of(folder / ADAPTER_WEIGHTS)}}
    (folder / ADAPTER_CONFIG).write_text(json.dumps(info.to_dict(), indent=2) + "\n", encoding="utf-8")
    return folder


def read_adapter_info(folder: str | os.PathLike[str]) -> AdapterInfo:
    folder = Path(folder)
    path = folder / ADAPTER_CONFIG
    if not path.is_file():
        raise ModelBundleError(f"'{folder}' has no {ADAPTER_CONFIG}; is it an adapter from duplus finetune?")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ModelBundleError(f"'{path}' is not valid JSON: {error}") from None
    if values.get("format") != ADAPTER_FORMAT:
        raise ModelBundleError(f"'{path}': unsupported adapter format {values.get('format')!r}; "
                               f"this version reads {ADAPTER_FORMAT}")
    unknown = set(values) - set(AdapterInfo.__dataclass_fields__)
    if unknown:
        raise ModelBundleError(f"'{path}': unknown key(s) {', '.join(sorted(unknown))}")
    return AdapterInfo(**values)


def load_adapter(bundle: ModelBundle, folder: str | os.PathLike[str], merge: bool = True) -> ModelBundle:
    """A new bundle: ``bundle`` with the adapter in ``folder`` applied; ``bundle`` itself is untouched.

    Refuses an adapter trained on other base weights (sha256), a weights file that does not match
    its recorded sha256, and tensors that do not fit the network. With ``merge`` (default) the
    low-rank updates are folded into the Linear weights, so inference costs exactly what the base
    model costs.
    """
    from safetensors import safe_open

    folder = Path(folder)
    info = read_adapter_info(folder)
    expected = base_sha256(bundle)
    if info.base_sha256 != expected:
        raise ModelBundleError(
            f"adapter '{folder}' was trained on base weights {info.base_sha256[:12]}…, but this model's "
            f"weights are {expected[:12]}…; load the model it was trained on"
        )
    weights = folder / info.files.get("weights", {}).get("path", ADAPTER_WEIGHTS)
    if weights.resolve().parent != folder.resolve() or not weights.is_file():
        raise ModelBundleError(f"adapter '{folder}': weights file missing or outside the folder")
    if sha256_of(weights) != info.files.get("weights", {}).get("sha256"):
        raise ModelBundleError(f"adapter '{folder}': {weights.name} does not match its sha256; it is corrupt or changed")
    try:
        with safe_open(str(weights), framework="pt") as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
            metadata = handle.metadata() or {}
    except Exception as error:  # safetensors raises several types for a damaged file
        raise ModelBundleError(f"adapter '{folder}': weights are unreadable: {error}") from None

    device = next(bundle.network.parameters()).device
    network = copy.deepcopy(bundle.network).cpu()
    add_adapters(network, info.rank, info.alpha, norms=False)
    modules = dict(network.named_modules())
    parameters = dict(network.named_parameters())
    expected_lora = {n for n, m in modules.items() if isinstance(m, LoRALinear)}
    found_lora = {key[5:-2] for key in tensors if key.startswith("lora.")}
    if found_lora != expected_lora:
        raise ModelBundleError(f"adapter '{folder}' does not fit this network "
                               f"({len(found_lora)} adapted layers, the network has {len(expected_lora)})")
    with torch.no_grad():
        for key, tensor in tensors.items():
            if key.startswith("lora."):
                module = modules[key[5:-2]]
                target = module.lora_a if key.endswith(".a") else module.lora_b
            elif key.startswith("norm."):
                target = parameters.get(key[5:])
                if target is None:
                    raise ModelBundleError(f"adapter '{folder}': '{key[5:]}' is not a parameter of this network")
            else:
                continue
            if target.shape != tensor.shape:
                raise ModelBundleError(f"adapter '{folder}': '{key}' has shape {tuple(tensor.shape)}, "
                                       f"the network needs {tuple(target.shape)}")
            target.copy_(tensor)
    if merge:
        merge_adapters(network)
    network.requires_grad_(False)
    network.eval().to(device)

    embeddings = bundle.embeddings
    if EMBEDDINGS_KEY in tensors:
        texts = json.loads(metadata.get("texts", "[]"))
        # the adapted text encoder is not shipped: new sentences would be encoded by the base encoder
        embeddings = PromptEmbeddings(texts, tensors[EMBEDDINGS_KEY], encoder_factory=None)
    config = copy.deepcopy(bundle.config)
    config.name = f"{bundle.config.name}+{info.name}"
    config.training = dict(config.training) | {"adapter": {
        "name": info.name, "path": str(folder), "rank": info.rank,
        "trainable_fraction": info.trainable_fraction,
        "sha256": info.files["weights"]["sha256"],
    }}
    return ModelBundle(bundle.path, config, network, embeddings, bundle.ontology)


def load_bundle_with_adapter(
    model: str | os.PathLike[str] | None, adapter: str | os.PathLike[str] | None, device: str = "cpu"
) -> ModelBundle:
    """What ``duplus segment --model BASE --adapter ADAPTER`` needs: the base bundle, adapted if asked."""
    bundle = load_bundle(model, device=device)
    return load_adapter(bundle, adapter) if adapter else bundle

