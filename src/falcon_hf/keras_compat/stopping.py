"""keras-hub's generation loop, timed on a left-padded batch: when it stops, and which new tokens each row keeps.

keras-hub right-pads the prompts to `max_length` and runs one loop over positions, from the end of the shortest prompt
to `max_length`; a longer prompt's row only starts generating when the loop reaches its end. So the `j`-th new token of
row `i` comes at keras step `j + offset_i`, `offset_i = len_i - min_len`, and row `i` may add `budget_i = max_length -
len_i` tokens. The loop stops after the step where every row holds a stop token among its new tokens. transformers
starts every row together on a left-padded batch: this criterion stops it after the same keras step, and
`kept_tokens` keeps from each row the tokens keras-hub would have written. Rows stay independent under greedy and
sampling decoding, so the result is keras-hub's, including the tokens it writes after a row's stop token.
"""

from collections.abc import Sequence

import torch
from transformers import StoppingCriteria


class LockstepStopCriteria(StoppingCriteria):
    """Stop once every row has a stop token within its budget and keras-hub's lockstep loop would have ended.

    Rows are (batch * candidates) when beam search hands the criterion several candidates per prompt: the offsets and
    budgets of a prompt apply to all its candidates. All rows stop together, never one by one.

    Example:

    ```python
    >>> stop = LockstepStopCriteria((0,), prompt_width=2, offsets=[0, 1], budgets=[3, 2])
    >>> stop(torch.tensor([[5, 5, 0, 7], [5, 5, 7, 0]]), None)  # row 1's stop is its 2nd token: keras step 2
    tensor([False, False])
    ```
    """

    def __init__(self, stop_token_ids: Sequence[int] | None, prompt_width: int, offsets: Sequence[int],
                 budgets: Sequence[int]):
        self.stop_token_ids = tuple(stop_token_ids) if stop_token_ids is not None else None
        self.prompt_width = prompt_width
        self.offsets = torch.as_tensor(offsets, dtype=torch.long)
        self.budgets = torch.as_tensor(budgets, dtype=torch.long)

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        rows = input_ids.shape[0]
        if self.stop_token_ids is None:
            return torch.zeros(rows, dtype=torch.bool, device=input_ids.device)
        new_tokens = input_ids[:, self.prompt_width :]  # (R, t)
        steps = new_tokens.shape[1]
        per_prompt = rows // len(self.offsets)
        offsets = self.offsets.repeat_interleave(per_prompt).to(input_ids.device)  # (R,)
        budgets = self.budgets.repeat_interleave(per_prompt).to(input_ids.device)  # (R,)
        stop_ids = torch.tensor(self.stop_token_ids, device=input_ids.device)
        within_budget = torch.arange(steps, device=input_ids.device)[None, :] < budgets[:, None]  # (R, t)
        is_stop = torch.isin(new_tokens, stop_ids) & within_budget
        first_stop = is_stop.int().argmax(dim=1)  # (R,), meaningful where a stop was found
        done = bool(is_stop.any(dim=1).all()) and steps >= int((first_stop + offsets).max()) + 1
        return torch.full((rows,), done, dtype=torch.bool, device=input_ids.device)

    def kept_tokens(self, new_tokens: torch.Tensor) -> list[torch.Tensor]:
        """Each row's share of the (B, T) new tokens: keras-hub wrote `T - offset_i` of them, at most its budget."""
        steps = new_tokens.shape[1]
        return [new_tokens[row, : max(0, min(steps - int(offset), int(budget)))]
                for row, (offset, budget) in enumerate(zip(self.offsets, self.budgets))]


__all__ = ["LockstepStopCriteria"]
