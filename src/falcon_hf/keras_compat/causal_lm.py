"""keras-hub's `FalconCausalLM` task over `FalconHFForCausalLM`: generate, fit, evaluate, predict, presets."""

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..conversion import export_keras_preset
from . import samplers as samplers_module
from .backbone import FalconBackbone, model_inputs
from .data import as_training_input, generate_batches
from .generation import check_max_length, generate_step, inference_mode, strip_prompt
from .preprocessor import FalconCausalLMPreprocessor
from .presets import classproperty, preset_table
from .training import (
    KERAS_DEFAULT_BATCH_SIZE,
    History,
    MetricTotals,
    batches,
    progress,
    resolve_loss,
    resolve_optimizer,
    steps_per_epoch,
)

FROM_PRESET_KWARGS = {"preprocessor", "dtype"}


class FalconCausalLM(nn.Module):
    """An end-to-end Falcon model for causal language modeling, with keras-hub's `FalconCausalLM` API.

    A thin layer over transformers: `backbone.hf_model` is a `FalconHFForCausalLM`, `generate` runs its
    `GenerationMixin.generate` with the compiled sampler's `GenerationConfig` settings, `fit` is a plain torch loop.
    Switching from keras-hub is one import: every example of keras-hub's documentation runs with `keras_hub` replaced
    by `falcon_hf`. By default, `"greedy"` sampling is used, as keras-hub's documentation says (keras-hub 0.32's code
    actually defaults `compile()` to `"top_k"`). `generate(prompt_dict)` with `preprocessor=None` and the default
    `stop_token_ids="auto"` stops at the backbone's end token (keras-hub raises there, so its own example fails).

    Args:
        backbone: a `falcon_hf.models.FalconBackbone`.
        preprocessor: a `falcon_hf.models.FalconCausalLMPreprocessor` or None (inputs are then token-id dicts).

    Examples:

    Use `generate()` to do text generation.
    ```python
    falcon_lm = falcon_hf.models.FalconCausalLM.from_preset("falcon_refinedweb_1b_en")
    falcon_lm.generate("I want to say", max_length=30)

    # Generate with batched prompts.
    falcon_lm.generate(["This is a", "Where are you"], max_length=30)
    ```

    Compile the `generate()` function with a custom sampler.
    ```python
    falcon_lm = falcon_hf.models.FalconCausalLM.from_preset("falcon_refinedweb_1b_en")
    falcon_lm.compile(sampler="top_k")
    falcon_lm.generate("I want to say", max_length=30)

    falcon_lm.compile(sampler=falcon_hf.samplers.BeamSampler(num_beams=2))
    falcon_lm.generate("I want to say", max_length=30)
    ```

    Use `generate()` without preprocessing.
    ```python
    prompt = {
        # Token ids for "<|endoftext|> Keras is".
        "token_ids": np.array([[50256, 17337, 292, 318]] * 2),
        # Use `"padding_mask"` to indicate values that should not be overridden.
        "padding_mask": np.array([[1, 1, 1, 1]] * 2),
    }
    falcon_lm = falcon_hf.models.FalconCausalLM.from_preset("falcon_refinedweb_1b_en", preprocessor=None)
    falcon_lm.generate(prompt)
    ```

    Call `fit()` on a single batch.
    ```python
    features = ["The quick brown fox jumped.", "I forgot my homework."]
    falcon_lm = falcon_hf.models.FalconCausalLM.from_preset("falcon_refinedweb_1b_en")
    falcon_lm.fit(x=features, batch_size=2)
    ```

    Call `fit()` without preprocessing.
    ```python
    x = {
        # Token ids for "<|endoftext|> Keras is deep learning library<|endoftext|>"
        "token_ids": np.array([[50256, 17337, 292, 318, 2769, 4673, 5888, 50256, 0]] * 2),
        "padding_mask": np.array([[1, 1, 1, 1, 1, 1, 1, 1, 0]] * 2),
    }
    y = np.array([[17337, 292, 318, 2769, 4673, 5888, 50256, 0, 0]] * 2)
    sw = np.array([[1, 1, 1, 1, 1, 1, 1, 0, 0]] * 2)
    falcon_lm = falcon_hf.models.FalconCausalLM.from_preset("falcon_refinedweb_1b_en", preprocessor=None)
    falcon_lm.fit(x=x, y=y, sample_weight=sw, batch_size=2)
    ```

    Custom backbone and vocabulary (merges whose pieces are missing from the vocabulary are dropped with a warning;
    keras-hub raises here).
    ```python
    vocab = {"<|endoftext|>": 0, "a": 4, "Ġquick": 5, "Ġfox": 6}
    merges = ["Ġ q", "u i", "c k", "ui ck", "Ġq uick"]
    merges += ["Ġ f", "o x", "Ġf ox"]
    tokenizer = falcon_hf.models.FalconTokenizer(vocabulary=vocab, merges=merges)
    preprocessor = falcon_hf.models.FalconCausalLMPreprocessor(tokenizer=tokenizer, sequence_length=128)
    backbone = falcon_hf.models.FalconBackbone(vocabulary_size=50304, num_layers=24, num_attention_heads=64,
                                               hidden_dim=2048, intermediate_dim=4 * 2048)
    falcon_lm = falcon_hf.models.FalconCausalLM(backbone=backbone, preprocessor=preprocessor)
    falcon_lm.fit(x=features, batch_size=2)
    ```
    """

    backbone_cls = FalconBackbone
    preprocessor_cls = FalconCausalLMPreprocessor

    def __init__(self, backbone: FalconBackbone, preprocessor: FalconCausalLMPreprocessor | None = None):
        super().__init__()
        if not isinstance(backbone, FalconBackbone):
            raise TypeError(f"backbone must be a falcon_hf.models.FalconBackbone, got {type(backbone).__name__}.")
        self.backbone = backbone
        self.preprocessor = preprocessor
        if preprocessor is not None:
            use_end_token(backbone.hf_model, preprocessor.tokenizer.end_token_id)
        self.compile()
        self.eval()  # Keras models have no mode: inference unless inside fit(), which switches to training and back

    @classmethod
    def from_preset(cls, preset: str | os.PathLike, load_weights: bool = True, **kwargs) -> "FalconCausalLM":
        """Load a preset: a built-in name (`FalconCausalLM.presets`), `kaggle://owner/model/keras/variation[/version]`,
        `hf://owner/repo`, or a local Keras preset folder or HF (`save_pretrained`) folder.

        Keyword arguments: `preprocessor` (None to work on token ids, or your own) and `dtype` (`"bfloat16"`, ...).
        `load_weights=False` gives random weights of the preset's config.

        Example:

        ```python
        >>> falcon_lm = falcon_hf.models.FalconCausalLM.from_preset("falcon_refinedweb_1b_en", dtype="bfloat16")
        ```
        """
        unknown = set(kwargs) - FROM_PRESET_KWARGS
        if unknown:
            raise TypeError(f"FalconCausalLM.from_preset() got unexpected arguments {sorted(unknown)}; it takes "
                            f"{sorted(FROM_PRESET_KWARGS)}.")
        backbone = cls.backbone_cls.from_preset(preset, load_weights=load_weights, dtype=kwargs.get("dtype"))
        preprocessor = kwargs["preprocessor"] if "preprocessor" in kwargs else cls.preprocessor_cls.from_preset(preset)
        return cls(backbone, preprocessor)

    @classproperty
    def presets(cls) -> dict[str, dict]:
        """Built-in and embedded presets: name -> {"metadata": {"description", "params", "path"}, ...}.

        Example:

        ```python
        >>> falcon_hf.models.FalconCausalLM.presets["falcon_refinedweb_1b_en"]["metadata"]["params"]
        1311625216
        ```
        """
        return preset_table()

    def compile(self, optimizer="auto", loss="auto", *, weighted_metrics="auto", sampler="greedy") -> None:
        """Set the training optimizer and loss and the `generate()` sampler (shadows `nn.Module.compile`; use
        `torch.compile(model)` for that).

        Args:
            optimizer: `"auto"` (keras-hub's `Adam(2e-5)`), `"adam"`, `"adamw"`, `"sgd"` (Keras defaults), a torch
                optimizer over this model's parameters, or a callable building one from `parameters`.
            loss: `"auto"` (weighted sparse cross-entropy summed over the batch size, as Keras computes it) or a
                callable `(y_true, logits, sample_weight) -> scalar`.
            weighted_metrics: `"auto"` (weighted `sparse_categorical_accuracy`) or None.
            sampler: a sampler name (`"greedy"`, `"top_k"`, `"top_p"`, `"beam"`, `"random"`, `"contrastive"`) or a
                `falcon_hf.samplers.Sampler`. Defaults to greedy, as keras-hub's documentation says (its 0.32 code
                defaults to top-k).

        Example:

        ```python
        >>> falcon_lm.compile(sampler=falcon_hf.samplers.TopKSampler(k=5, seed=0))
        ```
        """
        if weighted_metrics not in ("auto", None, []):
            raise ValueError("weighted_metrics must be 'auto' (weighted sparse_categorical_accuracy) or None.")
        settings = (resolve_optimizer(optimizer, self.parameters()), resolve_loss(loss), samplers_module.get(sampler))
        self.optimizer, self.loss, self.sampler = settings  # all or nothing: a bad argument changes no setting
        self.track_accuracy = weighted_metrics == "auto"

    def forward(self, inputs: dict) -> torch.Tensor:
        """Logits (B, T, vocabulary_size) for `{"token_ids", "padding_mask"}`."""
        token_ids, padding_mask = model_inputs(inputs, self.backbone.hf_model.device)
        return self.backbone.hf_model(input_ids=token_ids, attention_mask=padding_mask).logits

    def generate(self, inputs, max_length: int | None = None, stop_token_ids="auto", strip_prompt: bool = False):
        """Generate text given prompt `inputs`, with the sampler set by `compile()`.

        Args:
            inputs: a string, a list of strings, a `datasets.Dataset` or an iterable of batches (generated batch by
                batch and concatenated), or a `{"token_ids", "padding_mask"}` dict of right-padded prompts (the
                structure is returned, with the free positions filled and `padding_mask` marking prompt + new tokens).
            max_length: total length, prompt and start token included (defaults to the preprocessor's
                `sequence_length`): a positive integer of at most the backbone's `max_position_embeddings`, else a
                ValueError. Prompts longer than it are cut to it, as keras-hub does (nothing is generated for them).
                Ignored for dict inputs, whose width is the length (and must fit the same limit).
            stop_token_ids: `"auto"` (the end token `<|endoftext|>`), None (always generate up to `max_length`) or a
                tuple of ids, each of which ends a sequence.
            strip_prompt: return only the new text (or, for dicts, roll the new tokens to the front).

        An empty string is continued from the start token alone, as in keras-hub; an empty list, `datasets.Dataset`
        or iterable gives `[]`, and a dict with no rows comes back as it is. Stop tokens inside a prompt never stop
        generation: only new tokens count.

        Example:

        ```python
        >>> falcon_lm.generate(["This is a", "Where are you"], max_length=30)
        ```
        """
        check_max_length(max_length, self.backbone.hf_model.config.max_position_embeddings)
        stop = self._stop_token_ids(stop_token_ids)
        batches, single = generate_batches(inputs)
        outputs = [self._generate_batch(batch, max_length, stop, strip_prompt) for batch in batches]
        if not outputs:  # an empty datasets.Dataset or iterable of batches
            return []
        if isinstance(outputs[0], dict):
            return {key: np.concatenate([output[key] for output in outputs]) for key in outputs[0]}
        texts = [text for output in outputs for text in output]
        return texts[0] if single else texts

    def _generate_batch(self, batch, max_length: int | None, stop: tuple[int, ...] | None, strip: bool):
        is_text = not isinstance(batch, dict)
        if is_text and self.preprocessor is None:
            raise ValueError("generate() on text needs a preprocessor; with preprocessor=None pass "
                             "{'token_ids', 'padding_mask'}.")
        prompt = self.preprocessor.generate_preprocess(batch, sequence_length=max_length) if is_text else batch
        output = generate_step(self.backbone.hf_model, prompt, self.sampler, stop)
        if strip:
            output = strip_prompt(output, prompt)
        return self.preprocessor.generate_postprocess(output) if is_text else output

    def _stop_token_ids(self, stop_token_ids) -> tuple[int, ...] | None:
        if stop_token_ids is None:
            return None
        if isinstance(stop_token_ids, str):
            if stop_token_ids != "auto":
                raise ValueError(f"stop_token_ids must be 'auto', None or a tuple of ids, got {stop_token_ids!r}.")
            if self.preprocessor is not None:
                return (self.preprocessor.tokenizer.end_token_id,)
            end = self.backbone.config.eos_token_id
            if end is None:
                raise ValueError('stop_token_ids="auto" needs a preprocessor or a backbone with an eos_token_id; pass '
                                 "None or a tuple of ids.")
            return tuple(end) if isinstance(end, (list, tuple)) else (end,)
        if isinstance(stop_token_ids, int):
            return (stop_token_ids,)
        return tuple(int(token) for token in stop_token_ids)

    def fit(self, x=None, y=None, batch_size: int | None = None, epochs: int = 1, verbose="auto",
            sample_weight=None, shuffle: bool = True) -> History:
        """Train on raw text (through the preprocessor) or on preprocessed `x`/`y`/`sample_weight`.

        Returns a Keras-like `History`: `history.history["loss"]` holds one loss per epoch.

        Example:

        ```python
        >>> history = falcon_lm.fit(x=["The quick brown fox jumped.", "I forgot my homework."], batch_size=2, epochs=3)
        >>> len(history.history["loss"])
        3
        ```
        """
        x = as_training_input(x)
        batch_size = batch_size or KERAS_DEFAULT_BATCH_SIZE
        steps = steps_per_epoch(x, batch_size)
        history = History(params={"epochs": epochs, "steps": steps, "verbose": verbose})
        was_training = self.training
        self.train()
        try:
            for epoch in range(epochs):
                totals = MetricTotals()
                with progress(steps, f"Epoch {epoch + 1}/{epochs}", verbose) as bar:
                    for inputs, labels, weights in batches(x, y, sample_weight, batch_size, self.preprocessor,
                                                           shuffle=shuffle):
                        totals.update(*self._train_step(inputs, labels, weights))
                        bar.update(1)
                        bar.set_postfix(loss=f"{totals.logs(False)['loss']:.4f}")
                history.record(epoch, totals.logs(self.track_accuracy))
        finally:
            self.train(was_training)
        return history

    def _train_step(self, inputs: dict, labels: torch.Tensor, weights: torch.Tensor):
        device = self.backbone.hf_model.device
        labels, weights = labels.to(device), weights.to(device)
        logits = self(inputs)
        loss = self.loss(labels, logits, weights)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach(), logits.detach(), labels, weights

    @torch.no_grad()
    def evaluate(self, x=None, y=None, batch_size: int | None = None, verbose="auto", sample_weight=None,
                 return_dict: bool = False):
        """Loss (and weighted accuracy) on raw text or preprocessed data: `[loss, accuracy]`, or a dict.

        Example:

        ```python
        >>> loss, accuracy = falcon_lm.evaluate(x=["The quick brown fox jumped."])
        ```
        """
        x = as_training_input(x)
        batch_size = batch_size or KERAS_DEFAULT_BATCH_SIZE
        totals = MetricTotals()
        device = self.backbone.hf_model.device
        with inference_mode(self), progress(steps_per_epoch(x, batch_size), "evaluate", verbose) as bar:
            for inputs, labels, weights in batches(x, y, sample_weight, batch_size, self.preprocessor):
                labels, weights = labels.to(device), weights.to(device)
                logits = self(inputs)
                totals.update(self.loss(labels, logits, weights), logits, labels, weights)
                bar.update(1)
        logs = totals.logs(self.track_accuracy)
        if return_dict:
            return logs
        return list(logs.values()) if len(logs) > 1 else logs["loss"]

    @torch.no_grad()
    def predict(self, x, batch_size: int | None = None, verbose="auto") -> np.ndarray:
        """Logits (N, T, vocabulary_size) as float32 numpy, for raw text or a `{"token_ids", "padding_mask"}` dict.

        Example:

        ```python
        >>> falcon_lm.predict(["The quick brown fox jumped."]).shape
        (1, 1024, 50304)
        ```
        """
        x = as_training_input(x)
        batch_size = batch_size or KERAS_DEFAULT_BATCH_SIZE
        logits = []
        with inference_mode(self), progress(steps_per_epoch(x, batch_size), "predict", verbose) as bar:
            for inputs, _, _ in batches(x, None, None, batch_size, self.preprocessor, need_labels=False):
                logits.append(self(inputs).float().cpu().numpy())
                bar.update(1)
        return np.concatenate(logits)

    def count_params(self) -> int:
        return self.backbone.count_params()

    def save_pretrained(self, path: str | os.PathLike, **kwargs) -> Path:
        """Write an HF folder (`from_pretrained`, the Auto classes and pipelines load it); kwargs go to the model's
        `save_pretrained`. The tokenizer prepends the start token iff the preprocessor does, and its
        `model_max_length` is the preprocessor's `sequence_length`.

        Example:

        ```python
        >>> falcon_lm.save_pretrained("falcon-finetuned")
        ```
        """
        self.backbone.hf_model.save_pretrained(path, **kwargs)
        if self.preprocessor is not None:
            preprocessor = self.preprocessor
            tokenizer = preprocessor.tokenizer.to_hf_tokenizer(add_bos_token=preprocessor.add_start_token,
                                                               model_max_length=preprocessor.sequence_length)
            tokenizer.save_pretrained(path)
        return Path(path)

    def save_to_preset(self, path: str | os.PathLike) -> Path:
        """Write a Keras preset that keras-hub's `FalconCausalLM.from_preset(path)` (and ours) loads, through the
        HF -> Keras export converter. The preset holds the tokenizer, so a preprocessor is required.

        Example:

        ```python
        >>> falcon_lm.save_to_preset("falcon_finetuned_keras")
        ```
        """
        if self.preprocessor is None:
            raise ValueError("save_to_preset() writes the tokenizer too; attach a preprocessor first.")
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder)
            return export_keras_preset(folder, path)

    def __repr__(self) -> str:
        return f"FalconCausalLM(backbone={self.backbone!r}, preprocessor={self.preprocessor!r})"


def use_end_token(model, end_token_id: int) -> None:
    """Make the tokenizer's `<|endoftext|>` the model's bos/eos/pad id (config and generation config), as the Keras
    preset converter does, so saved folders and HF `generate` agree with the preprocessor."""
    for config in (model.config, model.generation_config):
        config.bos_token_id = config.eos_token_id = config.pad_token_id = end_token_id


__all__ = ["FalconCausalLM"]
