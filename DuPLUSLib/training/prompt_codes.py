"""What the network is told: sentence embeddings (DuPLUS) or one-hot task codes (the ablation).

Both become a :class:`PromptEmbeddings` table over every ontology sentence, so training, the saved
bundle and inference use one mechanism whichever code was chosen.
"""

from __future__ import annotations

import torch

from ..ontology import Ontology
from ..text import DEFAULT_TEXT_ENCODER_ID, PromptEmbeddings, TextEncoder

__all__ = ["build_prompt_codes", "ONEHOT_ENCODER_ID"]

ONEHOT_ENCODER_ID = "onehot"


def build_prompt_codes(ontology: Ontology, code: str, text_encoder: str | None = None) -> tuple[PromptEmbeddings, dict]:
    """The embedding table and the bundle's ``text_encoder`` entry for ``code`` ("text" or "onehot")."""
    if code == "text":
        encoder = TextEncoder(text_encoder)
        table = PromptEmbeddings.build(ontology.all_texts(), encoder)
        return table, {"id": text_encoder or DEFAULT_TEXT_ENCODER_ID, "path": text_encoder, "dim": encoder.dim}
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

