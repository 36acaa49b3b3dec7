"""Contrastive search (Su et al., 2022) as keras-hub's `ContrastiveSampler` runs it, on a transformers model's cache.

transformers 5 moved contrastive search out of `generate` (to the Hub repo `transformers-community/contrastive-search`,
loaded with `trust_remote_code`), so this is a short loop of our own. Each step: the `k` most likely next tokens are fed
as `k` candidate continuations of every row (the cache repeated `k` times), each candidate is scored
`(1 - alpha) * probability - alpha * max cosine similarity between its hidden state and the row's earlier hidden
states`, and the best candidate's cache, logits and hidden state are kept. Hidden states are the backbone's output
(after the final LayerNorm), as in keras-hub; padding positions take no part in the similarity.
"""

import torch
from transformers import DynamicCache

from .stopping import LockstepStopCriteria


def _step(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache: DynamicCache):
    """Next-token logits (R, V) in float32 and last hidden states (R, T, H) of `input_ids` (R, T) after `cache`."""
    outputs = model.transformer(input_ids=input_ids, attention_mask=attention_mask, cache=cache, use_cache=True)
    hidden = outputs.last_hidden_state
    return model.lm_head(hidden[:, -1]).float(), hidden


def max_similarity(candidates: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
    """Max cosine similarity of each candidate (B, k, H) to the real context positions (B, T, H) -> (B, k)."""
    candidates = torch.nn.functional.normalize(candidates.float(), dim=-1)
    context = torch.nn.functional.normalize(context.float(), dim=-1)
    similarity = candidates @ context.transpose(1, 2)  # (B, k, T)
    # -1 is the lowest cosine similarity: padding never wins the max (keras-hub masks future positions the same way).
    similarity = similarity.masked_fill(~context_mask[:, None, :].bool(), -1.0)
    return similarity.max(dim=-1).values


@torch.no_grad()
def contrastive_search(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int, k: int,
                       alpha: float, temperature: float, stopping: LockstepStopCriteria) -> torch.Tensor:
    """New tokens (B, T <= `max_new_tokens`) continuing left-padded `input_ids` (B, L) by contrastive search.

    Example:

    ```python
    >>> stop = LockstepStopCriteria(None, prompt_width=3, offsets=[0], budgets=[4])
    >>> contrastive_search(model, torch.tensor([[0, 5, 6]]), torch.ones(1, 3, dtype=torch.long), 4, k=4, alpha=0.6,
    ...                    temperature=1.0, stopping=stop).shape
    torch.Size([1, 4])
    ```
    """
    batch = input_ids.shape[0]
    rows = torch.arange(batch, device=input_ids.device)
    cache = DynamicCache(config=model.config)
    logits, context = _step(model, input_ids, attention_mask, cache)  # (B, V), (B, L, H)
    sequences, mask = input_ids, attention_mask
    for _ in range(max_new_tokens):
        probabilities = torch.softmax(logits / temperature, dim=-1)
        top_probabilities, top_tokens = probabilities.topk(k, dim=-1)  # (B, k)
        cache.batch_repeat_interleave(k)
        candidate_mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1).repeat_interleave(k, dim=0)
        candidate_logits, candidate_hidden = _step(model, top_tokens.reshape(-1, 1), candidate_mask, cache)
        candidate_hidden = candidate_hidden.reshape(batch, k, -1)  # (B*k, 1, H) -> (B, k, H)
        scores = (1 - alpha) * top_probabilities - alpha * max_similarity(candidate_hidden, context, mask)
        best = scores.argmax(dim=-1)  # (B,)
        cache.batch_select_indices(rows * k + best)
        logits = candidate_logits[rows * k + best]
        context = torch.cat([context, candidate_hidden[rows, best][:, None]], dim=1)
        sequences = torch.cat([sequences, top_tokens[rows, best][:, None]], dim=1)
        mask = candidate_mask[rows * k + best]
        if stopping(sequences, None).all():
            break
    return sequences[:, input_ids.shape[1] :]


__all__ = ["contrastive_search", "max_similarity"]
