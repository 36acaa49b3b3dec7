"""keras-hub's `generate_step` on a transformers model: right-padded `token_ids`/`padding_mask` in, the same out.

keras-hub's dict form holds each prompt at the start of its row (`padding_mask` True there) and fills the rest of the
row. Here the prompts are moved to a left-padded batch (which `FalconHFForCausalLM` handles exactly, ALiBi counting
real tokens only), continued by the sampler through transformers' `generate`, and written back where keras-hub writes
them; the returned `padding_mask` marks the prompt and the new tokens up to and including the first stop token.
"""

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from transformers.utils import logging

from .data import to_numpy
from .samplers import Sampler
from .stopping import LockstepStopCriteria

logger = logging.get_logger(__name__)


def check_max_length(max_length, limit: int, name: str = "max_length") -> None:
    """`max_length` must be None or a positive integer of at most `limit` (the model's `max_position_embeddings`)."""
    if max_length is None:
        return
    if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or max_length < 1:
        raise ValueError(f"generate(): {name} must be a positive integer (prompt and start token included), got "
                         f"{max_length!r}.")
    if max_length > limit:
        raise ValueError(f"generate(): {name}={max_length} is past the model's max_position_embeddings={limit}; "
                         "lower it, or raise config.max_position_embeddings if you mean to go past the training "
                         "context (ALiBi has no position table, but quality there is untested).")


def prompt_lengths(padding_mask: np.ndarray) -> np.ndarray:
    """Prompt length of each row of a (B, T) mask; each prompt must be a non-empty prefix of its row."""
    lengths = padding_mask.sum(axis=1)
    positions = np.arange(padding_mask.shape[1])[None, :]
    if not np.array_equal(padding_mask, positions < lengths[:, None]):
        raise ValueError("padding_mask must mark each prompt at the start of its row (right padding), as keras-hub's "
                         "preprocessor does.")
    if lengths.min(initial=1) < 1:
        raise ValueError(f"Row {int(lengths.argmin())} of padding_mask is empty: every prompt needs at least one token "
                         "(the start token).")
    return lengths


def left_padded(token_ids: np.ndarray, lengths: np.ndarray, pad_token_id: int,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompts as a left-padded (B, L) batch and its attention mask, L the longest prompt."""
    width = int(lengths.max())
    input_ids = torch.full((len(lengths), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(lengths), width), dtype=torch.long)
    for row, length in enumerate(lengths):
        input_ids[row, width - length :] = torch.from_numpy(token_ids[row, :length].astype(np.int64))
        attention_mask[row, width - length :] = 1
    return input_ids.to(device), attention_mask.to(device)


def output_padding_mask(token_ids: np.ndarray, prompt_mask: np.ndarray,
                        stop_token_ids: Sequence[int] | None) -> np.ndarray:
    """keras-hub's output mask: everything up to and including each row's first new stop token (all, with no stops)."""
    if stop_token_ids is None:
        return np.ones_like(prompt_mask, dtype=bool)
    end_locations = (np.isin(token_ids, stop_token_ids) & ~prompt_mask).astype(np.int32)
    after_end = np.cumsum(end_locations, axis=-1) - end_locations
    return after_end == 0


@contextlib.contextmanager
def inference_mode(model: torch.nn.Module) -> Iterator[None]:
    """No gradients and no dropout while generating; the training flag is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def generate_step(model, inputs: dict, sampler: Sampler, stop_token_ids: Sequence[int] | None) -> dict:
    """Fill the positions `inputs["padding_mask"]` leaves free, as keras-hub's `CausalLM.generate_step` does.

    Example:

    ```python
    >>> prompt = {"token_ids": np.array([[50256, 17337, 292, 318, 0, 0]]),
    ...           "padding_mask": np.array([[1, 1, 1, 1, 0, 0]])}
    >>> generate_step(model, prompt, GreedySampler(), stop_token_ids=(50256,))["token_ids"].shape
    (1, 6)
    ```
    """
    token_ids = to_numpy(inputs["token_ids"]).copy()  # positions the loop never reaches keep their values
    prompt_mask = to_numpy(inputs["padding_mask"]).astype(bool)
    if token_ids.ndim != 2 or token_ids.shape != prompt_mask.shape:
        raise ValueError(f"token_ids {token_ids.shape} and padding_mask {prompt_mask.shape} must be the same (B, T).")
    width = token_ids.shape[1]
    check_max_length(width, model.config.max_position_embeddings, name="the width of token_ids")
    if len(token_ids) == 0:  # an empty batch: nothing to generate
        return {"token_ids": token_ids, "padding_mask": prompt_mask}
    lengths = prompt_lengths(prompt_mask)
    if lengths.min() == width:
        logger.warning("generate(): padding_mask leaves no position to fill, so nothing is generated; pad token_ids "
                       "with padding_mask 0 up to the length you want.")
        return {"token_ids": token_ids, "padding_mask": output_padding_mask(token_ids, prompt_mask, stop_token_ids)}
    offsets, budgets = lengths - lengths.min(), width - lengths
    input_ids, attention_mask = left_padded(token_ids, lengths, model.config.pad_token_id, model.device)
    stopping = LockstepStopCriteria(stop_token_ids, input_ids.shape[1], offsets.tolist(), budgets.tolist())
    with inference_mode(model):
        new_tokens = sampler.decode(model, input_ids, attention_mask, int(budgets.max()), stopping)
    for row, tokens in enumerate(new_tokens):
        token_ids[row, lengths[row] : lengths[row] + len(tokens)] = tokens.cpu().numpy()
    return {"token_ids": token_ids, "padding_mask": output_padding_mask(token_ids, prompt_mask, stop_token_ids)}


def strip_prompt(outputs: dict, inputs: dict) -> dict:
    """keras-hub's `strip_prompt`: roll each row left by its prompt length; the mask keeps the new tokens only."""
    prompt_mask = to_numpy(inputs["padding_mask"]).astype(bool)
    width = prompt_mask.shape[1]
    shifts = np.mod(-prompt_mask.sum(axis=1), width)
    index = np.arange(width)[None, :] - shifts[:, None]

    def roll(values: np.ndarray) -> np.ndarray:
        return np.take_along_axis(values, np.mod(index, width), axis=1)

    return {"token_ids": roll(outputs["token_ids"]),
            "padding_mask": roll(prompt_mask) ^ roll(to_numpy(outputs["padding_mask"]).astype(bool))}


__all__ = ["check_max_length", "generate_step", "output_padding_mask", "strip_prompt"]
