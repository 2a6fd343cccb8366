"""What the network is told: sentence embeddings (DuPLUS) or one-hot task codes (the ablation).

Both become a :class:`PromptEmbeddings` table over every ontology sentence, so training, the saved
bundle and inference use one mechanism whichever code was chosen.
"""

from __future__ import annotations

import os

import torch

from ..ontology import Ontology
from ..text import DEFAULT_TEXT_ENCODER_ID, PromptEmbeddings, TextEncoder
from .config import ConfigError

__all__ = ["build_prompt_codes", "ONEHOT_ENCODER_ID"]

ONEHOT_ENCODER_ID = "onehot"


def build_prompt_codes(
    ontology: Ontology, code: str, text_encoder: str | None = None, table: str | os.PathLike[str] | None = None
) -> tuple[PromptEmbeddings, dict]:
    """The embedding table and the bundle's ``text_encoder`` entry for ``code`` ("text" or "onehot").

    ``table``: the text encoder's embeddings computed before (a bundle's ``prompt_embeddings``),
    read instead of running the encoder; it must hold every sentence of this ontology.
    """
    if table is not None and code != "text":
        raise ConfigError(f"prompt embeddings are sentence embeddings; this config's prompts.code is '{code}', "
                          "which uses none: leave the option out")
    if code == "text":
        entry = {"id": text_encoder or DEFAULT_TEXT_ENCODER_ID, "path": text_encoder}
        if table is not None:
            embeddings = _precomputed(ontology, table)
        else:
            embeddings = PromptEmbeddings.build(ontology.all_texts(), TextEncoder(text_encoder))
        return embeddings, {**entry, "dim": embeddings.dim}
    structures = list(ontology.structures)
    contexts = ontology.contexts()
    dim = max(len(structures), len(contexts))
    texts: list[str] = []
    vectors: list[torch.Tensor] = []
    for index, (modality, region) in enumerate(contexts):
        texts.append(ontology.context_text(modality, region))
        vectors.append(torch.nn.functional.one_hot(torch.tensor(index), dim).float())
    for prompt in ontology.all_prompts():
        for sentence in ontology.target_texts(prompt):
            if sentence not in texts:
                texts.append(sentence)
                vectors.append(torch.nn.functional.one_hot(torch.tensor(structures.index(prompt.structure)), dim).float())
    return PromptEmbeddings(texts, torch.stack(vectors)), {"id": ONEHOT_ENCODER_ID, "path": None, "dim": dim}


def _precomputed(ontology: Ontology, path: str | os.PathLike[str]) -> PromptEmbeddings:
    """Exactly the ontology's sentences, read from a saved table (so the bundle saves the same table)."""
    saved = PromptEmbeddings.load(path)
    texts = ontology.all_texts()
    missing = [t for t in texts if t not in saved]
    if missing:
        raise ConfigError(
            f"prompt embeddings '{path}' lack {len(missing)} sentence(s) of ontology {ontology.version}, "
            f"e.g. {missing[0]!r}; take them from a bundle of this ontology version, or leave the "
            "option out to compute them with the text encoder"
        )
    return PromptEmbeddings(texts, saved.get(texts))
