"""keras-hub's samplers as `GenerationConfig` settings of transformers' `generate` (contrastive: a small loop).

| keras-hub sampler | transformers `generate` |
|---|---|
| `GreedySampler()` | `do_sample=False` |
| `TopKSampler(k=5, seed=None)` | `do_sample=True, top_k=k, top_p=1.0` |
| `TopPSampler(p=0.1, k=None, seed=None)` | `do_sample=True, top_p=p, top_k=k or 0` |
| `RandomSampler(seed=None)` | `do_sample=True, top_k=0, top_p=1.0` |
| `BeamSampler(num_beams=5)` | `num_beams=num_beams, length_penalty=0.0`, the best beam returned |
| `ContrastiveSampler(k=5, alpha=0.6)` | `contrastive.contrastive_search` (transformers 5 moved it to a Hub repo) |

`temperature` divides the logits before the softmax in every sampler, as in keras-hub.
"""

import contextlib
from collections.abc import Iterator

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteriaList

from .contrastive import contrastive_search
from .stopping import LockstepStopCriteria

SEED_RANGE = 2**62


class Sampler:
    """Base class: a decoding strategy that continues a left-padded batch of prompts.

    Subclasses name their `GenerationConfig` settings in `generation_settings()`; `decode` runs transformers'
    `generate` with them. keras-hub's `get_next_token(probabilities)` hook is not supported: a custom strategy
    overrides `decode` instead.

    Example:

    ```python
    >>> from falcon_hf.samplers import TopKSampler
    >>> TopKSampler(k=3, seed=0).generation_settings()
    {'do_sample': True, 'top_k': 3, 'top_p': 1.0, 'temperature': 1.0}
    ```
    """

    def __init__(self, temperature: float = 1.0):
        if not temperature > 0:
            raise ValueError(f"{type(self).__name__}: temperature must be positive, got {temperature}.")
        self.temperature = temperature

    def generation_settings(self) -> dict:
        raise NotImplementedError(f"{type(self).__name__} must define generation_settings() or override decode().")

    def logits_processors(self) -> LogitsProcessorList:
        return LogitsProcessorList()

    def decode(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
               stopping: LockstepStopCriteria) -> list[torch.Tensor]:
        """Each row's new tokens for left-padded `input_ids` (B, L): at most `max_new_tokens`, as `stopping` keeps."""
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            min_length=0,
            # keras-hub keeps generating in rows that already stopped until every row has (only the padding mask marks
            # the end); `stopping` reproduces that, so transformers' own per-row end-of-text handling is switched off
            # by naming an id that no logit can produce.
            eos_token_id=[model.config.vocab_size],
            pad_token_id=model.config.pad_token_id,
            **self.generation_settings(),
        )
        with self.random_state(model.device):
            output = model.generate(input_ids, attention_mask=attention_mask, generation_config=config,
                                    logits_processor=self.logits_processors(),
                                    stopping_criteria=StoppingCriteriaList([stopping]))
        return stopping.kept_tokens(output[:, input_ids.shape[1] :])

    @contextlib.contextmanager
    def random_state(self, device: torch.device) -> Iterator[None]:
        """Deterministic samplers need no random state."""
        yield

    def get_config(self) -> dict:
        return {"temperature": self.temperature}

    @classmethod
    def from_config(cls, config: dict) -> "Sampler":
        return cls(**config)

    def __repr__(self) -> str:
        settings = ", ".join(f"{key}={value!r}" for key, value in self.get_config().items())
        return f"{type(self).__name__}({settings})"


class SeededSampler(Sampler):
    """A sampler that draws tokens: `seed` makes a sequence of `generate` calls reproducible.

    Like keras-hub's `SeedGenerator`, the seed starts a stream: each call draws its own seed from it, so two calls give
    different samples and a sampler rebuilt with the same seed repeats them. The global torch RNG is left untouched.
    `seed=None` samples from the global torch RNG.
    """

    def __init__(self, seed: int | None = None, temperature: float = 1.0):
        super().__init__(temperature=temperature)
        self.seed = seed
        self._seeds = torch.Generator().manual_seed(seed) if seed is not None else None

    @contextlib.contextmanager
    def random_state(self, device: torch.device) -> Iterator[None]:
        if self._seeds is None:
            yield
            return
        call_seed = int(torch.randint(SEED_RANGE, (1,), generator=self._seeds))
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(call_seed)
            yield

    def get_config(self) -> dict:
        return {**super().get_config(), "seed": self.seed}


class GreedySampler(Sampler):
    """Always the most likely token (keras-hub's `GreedySampler`).

    Example:

    ```python
    >>> falcon_lm.compile(sampler=falcon_hf.samplers.GreedySampler())
    ```
    """

    def generation_settings(self) -> dict:
        return {"do_sample": False, "num_beams": 1}


class TopKSampler(SeededSampler):
    """Sample among the `k` most likely tokens (keras-hub's `TopKSampler`).

    Example:

    ```python
    >>> falcon_lm.compile(sampler=falcon_hf.samplers.TopKSampler(k=5, temperature=0.7, seed=0))
    ```
    """

    def __init__(self, k: int = 5, seed: int | None = None, temperature: float = 1.0):
        super().__init__(seed=seed, temperature=temperature)
        if k < 1:
            raise ValueError(f"TopKSampler: k must be at least 1, got {k}.")
        self.k = k

    def generation_settings(self) -> dict:
        return {"do_sample": True, "top_k": self.k, "top_p": 1.0, "temperature": self.temperature}

    def get_config(self) -> dict:
        return {**super().get_config(), "k": self.k}


class TopPSampler(SeededSampler):
    """Sample from the smallest set of most likely tokens whose probability reaches `p` (keras-hub's `TopPSampler`).

    `k` optionally keeps only the `k` most likely tokens first. keras-hub keeps a token when the probability before it
    is `<= p`, transformers when it is `< p`: they differ only on exact ties with `p`.

    Example:

    ```python
    >>> falcon_lm.compile(sampler=falcon_hf.samplers.TopPSampler(p=0.1, k=1_000, seed=0))
    ```
    """

    def __init__(self, p: float = 0.1, k: int | None = None, seed: int | None = None, temperature: float = 1.0):
        super().__init__(seed=seed, temperature=temperature)
        if not 0.0 < p <= 1.0:
            raise ValueError(f"TopPSampler: p must be in (0, 1], got {p}.")
        self.p, self.k = p, k

    def generation_settings(self) -> dict:
        return {"do_sample": True, "top_p": self.p, "top_k": self.k or 0, "temperature": self.temperature}

    def get_config(self) -> dict:
        return {**super().get_config(), "p": self.p, "k": self.k}


class RandomSampler(SeededSampler):
    """Sample from the whole distribution (keras-hub's `RandomSampler`).

    Example:

    ```python
    >>> falcon_lm.compile(sampler=falcon_hf.samplers.RandomSampler(temperature=0.7, seed=0))
    ```
    """

    def generation_settings(self) -> dict:
        return {"do_sample": True, "top_k": 0, "top_p": 1.0, "temperature": self.temperature}


class LogSoftmaxTemperature(LogitsProcessor):
    """Beam search scores `log_softmax(logits / temperature)`, as keras-hub's `BeamSampler` does.

    transformers' beam search hands processors `log_softmax(logits)`; dividing by the temperature and normalising
    again gives exactly `log_softmax(logits / temperature)` (the two differ by a per-row constant).
    """

    def __init__(self, temperature: float):
        self.temperature = temperature

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return torch.log_softmax(scores / self.temperature, dim=-1)


class BeamSampler(Sampler):
    """Beam search keeping `num_beams` sequences by total log-probability; the best one is returned.

    `length_penalty=0.0` makes transformers rank beams by their summed log-probability, as keras-hub does. Each prompt
    is searched on its own: keras-hub's batched beam search lets a longer prompt's forced tokens pick beams by tokens
    it then overwrites, so its batched results depend on the other prompts. Beams keep going after a stop token until
    every candidate of the prompt holds one, as keras-hub's beams do (it checks its kept beams; transformers hands the
    check its `2 * num_beams` candidates). `return_all_beams=True` is not supported (keras-hub's `generate` cannot
    return it either).

    Example:

    ```python
    >>> falcon_lm.compile(sampler=falcon_hf.samplers.BeamSampler(num_beams=2))
    ```
    """

    def __init__(self, num_beams: int = 5, return_all_beams: bool = False, temperature: float = 1.0):
        super().__init__(temperature=temperature)
        if num_beams < 1:
            raise ValueError(f"BeamSampler: num_beams must be at least 1, got {num_beams}.")
        if return_all_beams:
            raise NotImplementedError("BeamSampler(return_all_beams=True): generate() returns one sequence per prompt "
                                      "(keras-hub's generate() cannot return all beams either).")
        self.num_beams = num_beams
        self.return_all_beams = return_all_beams

    def generation_settings(self) -> dict:
        return {"do_sample": False, "num_beams": self.num_beams, "num_return_sequences": 1, "length_penalty": 0.0}

    def logits_processors(self) -> LogitsProcessorList:
        if self.temperature == 1.0:
            return LogitsProcessorList()
        return LogitsProcessorList([LogSoftmaxTemperature(self.temperature)])

    def decode(self, model, input_ids, attention_mask, max_new_tokens, stopping):
        rows = []
        for row in range(input_ids.shape[0]):
            prompt = input_ids[row : row + 1, attention_mask[row].bool()]  # (1, len_i): no padding
            budget = stopping.budgets[row].item()
            single = LockstepStopCriteria(stopping.stop_token_ids, prompt.shape[1], offsets=[0], budgets=[budget])
            if budget == 0:
                rows.append(prompt[0, :0])
                continue
            rows += super().decode(model, prompt, torch.ones_like(prompt), budget, single)
        return rows

    def get_config(self) -> dict:
        return {**super().get_config(), "num_beams": self.num_beams, "return_all_beams": self.return_all_beams}


class ContrastiveSampler(Sampler):
    """Contrastive search (keras-hub's `ContrastiveSampler`): among the `k` most likely tokens, the one maximising
    `(1 - alpha) * probability - alpha * max cosine similarity to the context's hidden states`.

    transformers 5 moved contrastive search (`penalty_alpha`) to the Hub repo
    `transformers-community/contrastive-search`, which needs a download and `trust_remote_code`; this sampler runs
    `contrastive.contrastive_search`, a short loop on the model's cache instead.

    Example:

    ```python
    >>> falcon_lm.compile(sampler=falcon_hf.samplers.ContrastiveSampler(k=4, alpha=0.6))
    ```
    """

    def __init__(self, k: int = 5, alpha: float = 0.6, temperature: float = 1.0):
        super().__init__(temperature=temperature)
        if k < 1:
            raise ValueError(f"ContrastiveSampler: k must be at least 1, got {k}.")
        self.k, self.alpha = k, alpha

    def decode(self, model, input_ids, attention_mask, max_new_tokens, stopping):
        new_tokens = contrastive_search(model, input_ids, attention_mask, max_new_tokens, k=self.k, alpha=self.alpha,
                                        temperature=self.temperature, stopping=stopping)
        return stopping.kept_tokens(new_tokens)

    def get_config(self) -> dict:
        return {**super().get_config(), "k": self.k, "alpha": self.alpha}


SAMPLERS = {
    "beam": BeamSampler,
    "contrastive": ContrastiveSampler,
    "greedy": GreedySampler,
    "random": RandomSampler,
    "top_k": TopKSampler,
    "top_p": TopPSampler,
}
"""keras-hub's sampler names (its `speculative` sampler has no counterpart here)."""


def get(identifier) -> Sampler | None:
    """A sampler from a name (`"greedy"`, `"top_k"`, ...), a `{"class_name", "config"}` dict, a class or an instance.

    Example:

    ```python
    >>> from falcon_hf import samplers
    >>> samplers.get("top_k")
    TopKSampler(temperature=1.0, seed=None, k=5)
    ```
    """
    if identifier is None or isinstance(identifier, Sampler):
        return identifier
    if isinstance(identifier, str):
        if identifier not in SAMPLERS:
            raise ValueError(f"Unknown sampler '{identifier}'; use one of {', '.join(sorted(SAMPLERS))} or a Sampler.")
        return SAMPLERS[identifier]()
    if isinstance(identifier, dict):
        name = str(identifier.get("class_name", "")).split(">")[-1]
        classes = {cls.__name__: cls for cls in SAMPLERS.values()}
        if name not in classes and name not in SAMPLERS:
            raise ValueError(f"Unknown sampler class_name '{identifier.get('class_name')}'.")
        return (classes.get(name) or SAMPLERS[name]).from_config(identifier.get("config") or {})
    if isinstance(identifier, type) and issubclass(identifier, Sampler):
        return identifier()
    raise ValueError(f"Could not interpret sampler {identifier!r}: pass a name, a config dict or a Sampler.")


__all__ = ["BeamSampler", "ContrastiveSampler", "GreedySampler", "RandomSampler", "Sampler", "TopKSampler",
           "TopPSampler", "get"]
