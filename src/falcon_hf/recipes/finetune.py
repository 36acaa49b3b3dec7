"""`finetune(...)`: LoRA, QLoRA or full fine-tuning of a Falcon with transformers' `Trainer`, ending in a merged folder.

One code path for the library, the `falcon-hf finetune` command and the examples; the same call runs on one process
or under `accelerate launch` / `torchrun` (DDP, FSDP), since `Trainer` reads the launcher's environment.

Output folder:

```
OUTPUT/
  checkpoints/checkpoint-N/   Trainer checkpoints every `save_steps` (`resume=True` continues from the last whole one)
  adapter/                    the LoRA adapter (recipes lora, qlora): `PeftModel.from_pretrained(base, OUTPUT/adapter)`
  merged/                     standalone HF folder (weights merged, tokenizer): `AutoModelForCausalLM.from_pretrained`
  keras_preset/               with `export_keras=True`: `keras_hub.models.FalconCausalLM.from_preset`
  metrics.json                eval loss and perplexity before and after, training loss log
  rank_checksums/rank-R.json  with `rank_checksums=True`: SHA-256 of the weights each process ends with
```
"""

import hashlib
import importlib.util
import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.utils import DistributedType
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import (AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, Trainer, TrainingArguments,
                          default_data_collator, set_seed)
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import TrainerState
from transformers.trainer_utils import TrainOutput
from transformers.utils import logging

from ..conversion import convert_keras_preset, export_keras_preset
from ..conversion.atomic import atomic_output_dir
from ..conversion.resolve import BUILTIN_PRESETS, EMBEDDED_PRESETS, HF_PREFIX, KAGGLE_PREFIX, is_preset_folder
from ..modeling_falcon_hf import FalconHFForCausalLM
from ..tokenization_falcon_hf import FalconHFTokenizer
from .data import EVAL_SPLIT, TRAIN_SPLIT, prepare_datasets
from .errors import RecipeError

logger = logging.get_logger(__name__)

DEFAULT_BASE = "tiny_shakespeare"
CHECKPOINTS, ADAPTER, MERGED, KERAS_PRESET = "checkpoints", "adapter", "merged", "keras_preset"
METRICS_FILE, CHECKSUMS = "metrics.json", "rank_checksums"
RUN_ENTRIES = (CHECKPOINTS, ADAPTER, MERGED, KERAS_PRESET, METRICS_FILE, CHECKSUMS)
FULL_STAGING, ADAPTER_STAGING = ".merged.partial", ".adapter.partial"  # written by Trainer, then moved in whole
DROPPED_FROM_MERGED = ("training_args.bin",)  # a pickle of the Trainer's arguments: not part of a model folder
CHECKPOINT_FOLDER = re.compile(r"checkpoint-(\d+)")


@dataclass(frozen=True)
class Recipe:
    """What a named recipe trains and its defaults (each overridable through `finetune`'s arguments)."""

    name: str
    adapter: bool
    quantize_4bit: bool
    learning_rate: float
    gradient_checkpointing: bool
    dtype: str


RECIPES = {
    # LoRA: 2e-4 as in the QLoRA paper's 7B-13B runs; B starts at zero, so the first steps cannot hurt the base.
    "lora": Recipe("lora", adapter=True, quantize_4bit=False, learning_rate=2e-4, gradient_checkpointing=False,
                   dtype="float32"),
    # QLoRA trades compute for memory on both ends: a 4-bit base computing in bf16, and recomputed activations.
    "qlora": Recipe("qlora", adapter=True, quantize_4bit=True, learning_rate=2e-4, gradient_checkpointing=True,
                    dtype="bfloat16"),
    # Full fine-tuning moves every weight: a 10x smaller rate keeps a pre-trained model from forgetting at once.
    "full": Recipe("full", adapter=False, quantize_4bit=False, learning_rate=2e-5, gradient_checkpointing=False,
                   dtype="float32"),
}


@dataclass
class FinetuneResult:
    """Where a fine-tuning run wrote its outputs, and its metrics (see the module docstring for the layout)."""

    output_dir: Path
    merged_dir: Path
    adapter_dir: Path | None
    keras_preset_dir: Path | None
    metrics: dict = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"merged model: {self.merged_dir}"]
        lines += [f"LoRA adapter: {self.adapter_dir}"] if self.adapter_dir else []
        lines += [f"Keras preset: {self.keras_preset_dir}"] if self.keras_preset_dir else []
        if "eval_perplexity" in self.metrics:
            lines.append(f"eval perplexity: {self.metrics['eval_perplexity_before']:.3f} before, "
                         f"{self.metrics['eval_perplexity']:.3f} after {self.metrics['global_step']} steps")
        return "\n".join(lines)


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise RecipeError(f"Unknown recipe '{name}'; choose one of {', '.join(RECIPES)}.")
    return RECIPES[name]


def check_quantization_support() -> None:
    """QLoRA needs bitsandbytes and a CUDA GPU; say which is missing and what to use instead."""
    missing = []
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU (none is visible to torch)")
    if importlib.util.find_spec("bitsandbytes") is None:
        missing.append("the bitsandbytes package (pip install bitsandbytes)")
    if missing:
        raise RecipeError("recipe 'qlora' loads the base model in 4 bits with bitsandbytes, which needs "
                          f"{' and '.join(missing)}. Use recipe='lora' (--recipe lora) instead: the same adapters on "
                          "an unquantized base.")


def is_keras_preset(base: str | os.PathLike) -> bool:
    """Whether `base` names a Keras preset (handle, built-in or embedded name, preset folder), not an HF model."""
    source = os.fspath(base)
    if source.startswith((KAGGLE_PREFIX, HF_PREFIX)) or source in BUILTIN_PRESETS:
        return True
    local = Path(source).expanduser()
    if local.is_dir():
        return is_preset_folder(local)
    return (EMBEDDED_PRESETS / source).is_dir()


def load_tokenizer(base: str | os.PathLike):
    if is_keras_preset(base):
        return FalconHFTokenizer.from_keras_preset(os.fspath(base))
    return AutoTokenizer.from_pretrained(os.fspath(base))


def load_base_model(base: str | os.PathLike, dtype: torch.dtype, quantize_4bit: bool = False):
    """The base causal LM from an HF folder, a Hub id or a Keras preset; in 4 bits for QLoRA."""
    if quantize_4bit:
        return load_4bit_model(base, dtype)
    if is_keras_preset(base):
        return FalconHFForCausalLM.from_keras_preset(os.fspath(base), dtype=dtype)
    return AutoModelForCausalLM.from_pretrained(os.fspath(base), dtype=dtype)


def load_4bit_model(base: str | os.PathLike, dtype: torch.dtype):
    """NF4 base with `dtype` compute (the QLoRA paper's setting); Keras presets go through a temporary HF folder."""
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=dtype)
    if not is_keras_preset(base):
        return AutoModelForCausalLM.from_pretrained(os.fspath(base), dtype=dtype, quantization_config=quantization)
    with tempfile.TemporaryDirectory(prefix="falcon_hf_base_") as folder:
        converted = convert_keras_preset(os.fspath(base), Path(folder) / "hf", dtype=dtype)
        return AutoModelForCausalLM.from_pretrained(converted, dtype=dtype, quantization_config=quantization)


def add_adapter(model, recipe: Recipe, lora_r: int, lora_alpha: int, lora_dropout: float,
                lora_target_modules: list[str] | str | None, gradient_checkpointing: bool):
    """Wrap `model` in a LoRA `PeftModel`; `lora_target_modules=None` takes peft's default for the model type."""
    if lora_target_modules == ["all-linear"]:  # peft's keyword is a string; as a list item it would be a module name
        lora_target_modules = "all-linear"
    if recipe.quantize_4bit:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    config = LoraConfig(task_type="CAUSAL_LM", r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                        target_modules=lora_target_modules)
    return get_peft_model(model, config)


class PerplexityTrainer(Trainer):
    """`Trainer` that logs `eval_perplexity = exp(eval_loss)` next to every eval loss (mean token NLL, natural log)."""

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        for key in [key for key in logs if key.endswith("_loss") and "train" not in key and key != "loss"]:
            logs[key.removesuffix("_loss") + "_perplexity"] = perplexity(logs[key])
        super().log(logs, *args, **kwargs)


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf  # exp overflows a float64 above ~709


def check_output_dir(output_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to mix two runs in one folder: an earlier run's outputs need `resume` or `overwrite`."""
    if resume and overwrite:
        raise RecipeError("resume=True and overwrite=True contradict each other; pass one of them.")
    if output_dir.exists() and not output_dir.is_dir():
        raise RecipeError(f"{output_dir}: is a file; output_dir must be a folder.")
    earlier = [name for name in RUN_ENTRIES if (output_dir / name).exists()]
    if earlier and not (resume or overwrite):
        raise RecipeError(f"{output_dir}: holds an earlier run ({', '.join(earlier)}); pass resume=True (--resume) to "
                          "continue it or overwrite=True (--overwrite) to start over.")


def clear_earlier_run(output_dir: Path) -> None:
    """Remove only what a run writes (never other files the user keeps in `output_dir`)."""
    for name in (*RUN_ENTRIES, FULL_STAGING, ADAPTER_STAGING):
        path = output_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def default_use_cpu() -> bool:
    """Train on CPU when torch sees no accelerator (Trainer then also runs multi-process CPU jobs on gloo)."""
    return not torch.accelerator.is_available()


def default_bf16(use_cpu: bool) -> bool:
    """bf16 mixed precision where the GPU supports it; CPU autocast to bf16 is slower than float32 on most CPUs."""
    return not use_cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def training_arguments(
    output_dir: Path, recipe: Recipe, *, max_steps: int, num_train_epochs: float, per_device_batch_size: int,
    gradient_accumulation_steps: int, learning_rate: float | None, lr_scheduler_type: str, warmup_ratio: float,
    weight_decay: float, gradient_checkpointing: bool | None, bf16: bool | None, eval_steps: int | None,
    save_steps: int, save_total_limit: int | None, logging_steps: int, seed: int, use_cpu: bool | None,
    disable_tqdm: bool | None,
) -> TrainingArguments:
    use_cpu = default_use_cpu() if use_cpu is None else use_cpu
    return TrainingArguments(
        output_dir=str(output_dir / CHECKPOINTS),
        max_steps=max_steps,
        num_train_epochs=num_train_epochs,
        per_device_train_batch_size=per_device_batch_size,
        per_device_eval_batch_size=per_device_batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        learning_rate=recipe.learning_rate if learning_rate is None else learning_rate,
        lr_scheduler_type=lr_scheduler_type,
        warmup_steps=warmup_ratio,  # a float below 1 is a fraction of the total steps
        weight_decay=weight_decay,
        activation_checkpointing=recipe.gradient_checkpointing if gradient_checkpointing is None
        else gradient_checkpointing,
        # Non-reentrant checkpointing needs no input gradients, so frozen embeddings (LoRA) work unchanged.
        activation_checkpointing_kwargs={"use_reentrant": False},
        bf16=default_bf16(use_cpu) if bf16 is None else bf16,
        eval_strategy="steps",
        eval_steps=eval_steps or save_steps,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=save_total_limit,
        logging_steps=logging_steps,
        logging_first_step=True,
        # The "before" evaluation runs inside train(): a Trainer.evaluate() call before train() marks the model as
        # prepared by accelerate, and train() then never wraps it in DDP (each process would train on its own).
        eval_on_start=True,
        report_to="none",
        seed=seed,
        data_seed=seed,
        use_cpu=use_cpu,
        disable_tqdm=disable_tqdm,
        # Frozen base weights never get gradients; DDP tracks only trainable ones, so no search for unused ones.
        ddp_find_unused_parameters=False,
    )


def warn_if_fsdp_dropped(trainer: Trainer) -> None:
    """accelerate 1.15 turns FSDP on only for GPU-like devices; on CPU an FSDP launch quietly runs DDP. Say so."""
    requested = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" or bool(trainer.args.fsdp)
    running = trainer.accelerator.distributed_type
    if requested and running != DistributedType.FSDP:
        logger.warning(f"FSDP was requested but accelerate runs {running} here (it enables FSDP on GPUs only): every "
                       "process holds the whole model, as in DDP.")


def weights_checksum(model) -> dict:
    """SHA-256 over the names and raw bytes of every tensor in `model`'s state dict (the local shard of a DTensor)."""
    digest = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        tensor = state[name]
        tensor = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return {"sha256": digest.hexdigest(), "tensors": len(state)}


def write_rank_checksum(trainer: Trainer, output_dir: Path) -> None:
    state = trainer.accelerator.state
    record = {"rank": state.process_index, "world_size": state.num_processes,
              "distributed_type": str(state.distributed_type),
              **weights_checksum(trainer.accelerator.unwrap_model(trainer.model))}
    folder = output_dir / CHECKSUMS
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank-{state.process_index}.json").write_text(json.dumps(record, indent=2) + "\n")


def write_merged_lora(base: str | os.PathLike, dtype: torch.dtype, adapter_dir: Path, merged_dir: Path,
                      tokenizer) -> None:
    """Base (reloaded unquantized) + adapter -> merged weights, written to `merged_dir` all at once or not at all.

    Reloading rather than merging the trained model in memory works the same after DDP, FSDP (sharded weights) and
    QLoRA (merging into 4-bit weights would round the update away).
    """
    merged = PeftModel.from_pretrained(load_base_model(base, dtype), adapter_dir).merge_and_unload()
    with atomic_output_dir(merged_dir, force=True) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def publish_staged_folder(staging: Path, destination: Path) -> None:
    """Move the folder `Trainer.save_model` wrote into place as `destination` (merged or adapter), all at once."""
    with atomic_output_dir(destination, force=True) as tmp:
        for entry in staging.iterdir():
            if entry.name not in DROPPED_FROM_MERGED:
                os.replace(entry, tmp / entry.name)
    shutil.rmtree(staging)


def write_metrics(path: Path, metrics: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    os.replace(tmp, path)


def finetune(
    data: str | os.PathLike,
    output_dir: str | os.PathLike,
    base: str | os.PathLike = DEFAULT_BASE,
    recipe: str = "lora",
    *,
    block_size: int = 128,
    eval_fraction: float = 0.1,
    text_column: str = "text",
    max_steps: int = -1,
    num_train_epochs: float = 1.0,
    per_device_batch_size: int = 8,
    gradient_accumulation_steps: int = 1,
    learning_rate: float | None = None,
    lr_scheduler_type: str = "cosine",
    warmup_ratio: float = 0.03,
    weight_decay: float = 0.0,
    lora_r: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.05,
    lora_target_modules: list[str] | str | None = None,
    gradient_checkpointing: bool | None = None,
    bf16: bool | None = None,
    dtype: str | None = None,
    eval_steps: int | None = None,
    save_steps: int = 200,
    save_total_limit: int | None = 2,
    logging_steps: int = 10,
    resume: bool = False,
    overwrite: bool = False,
    export_keras: bool = False,
    seed: int = 42,
    num_proc: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    use_cpu: bool | None = None,
    disable_tqdm: bool | None = None,
    rank_checksums: bool = False,
) -> FinetuneResult:
    """Fine-tune `base` on the text in `data` with a named recipe and write a merged HF folder to `output_dir/merged`.

    Args:
        data: text / JSONL / CSV file or folder, or a `datasets` dataset saved on disk (see `prepare_datasets`).
        output_dir: the run's folder (layout in this module's docstring).
        base: HF folder, Hub id, or Keras preset (folder, `kaggle://`/`hf://` handle, built-in or embedded name).
        recipe: `lora` (default), `qlora` (4-bit base, needs bitsandbytes and a CUDA GPU) or `full`.
        block_size, eval_fraction, text_column, num_proc, cache_dir: data preparation (`prepare_datasets`).
        max_steps: optimizer steps; -1 runs `num_train_epochs` epochs.
        per_device_batch_size, gradient_accumulation_steps: blocks per step per process, and steps per update.
        learning_rate: None takes the recipe's (2e-4 for LoRA/QLoRA, 2e-5 for full).
        lr_scheduler_type, warmup_ratio, weight_decay: the schedule (cosine after linear warmup by default).
        lora_r, lora_alpha, lora_dropout: LoRA rank, scale numerator and dropout.
        lora_target_modules: module names to adapt, or "all-linear"; None takes peft's default for `falcon_hf`
            (`query_key_value`).
        gradient_checkpointing: None takes the recipe's (on for QLoRA only).
        bf16: bf16 mixed precision; None enables it on GPUs that support it.
        dtype: dtype the base model is loaded in; None takes the recipe's (float32 master weights for lora and
            full, whose bf16 compute comes from `bf16`; bfloat16 compute for qlora's 4-bit base).
        eval_steps, save_steps, save_total_limit, logging_steps: evaluation / checkpoint / logging cadence.
        resume: continue from the last checkpoint in `output_dir/checkpoints` (a fresh start if there is none).
        overwrite: remove an earlier run's outputs from `output_dir` first.
        export_keras: also write `output_dir/keras_preset` with `falcon_hf.conversion.export_keras_preset`.
        seed: seeds adapter initialization, data order and dropout.
        use_cpu: None trains on CPU exactly when torch sees no accelerator.
        disable_tqdm: None shows progress bars unless logging is quieter than WARNING (transformers' rule).
        rank_checksums: write `output_dir/rank_checksums/rank-R.json` (SHA-256 of each process's final weights).

    Example:

    ```python
    >>> from falcon_hf.recipes import finetune
    >>> result = finetune("../shared/data/tinyshakespeare.txt", "runs/shakespeare-lora", max_steps=200)
    >>> result.metrics["eval_perplexity_before"] > result.metrics["eval_perplexity"]
    True
    ```
    """
    chosen = get_recipe(recipe)
    if chosen.quantize_4bit:
        check_quantization_support()
    output_dir = Path(output_dir).expanduser()
    check_output_dir(output_dir, resume, overwrite)
    torch_dtype = getattr(torch, dtype or chosen.dtype)
    args = training_arguments(
        output_dir, chosen, max_steps=max_steps, num_train_epochs=num_train_epochs,
        per_device_batch_size=per_device_batch_size, gradient_accumulation_steps=gradient_accumulation_steps,
        learning_rate=learning_rate, lr_scheduler_type=lr_scheduler_type, warmup_ratio=warmup_ratio,
        weight_decay=weight_decay, gradient_checkpointing=gradient_checkpointing, bf16=bf16, eval_steps=eval_steps,
        save_steps=save_steps, save_total_limit=save_total_limit, logging_steps=logging_steps, seed=seed,
        use_cpu=use_cpu, disable_tqdm=disable_tqdm,
    )
    state = args.distributed_state  # every process has checked output_dir before the main one changes it
    state.wait_for_everyone()
    if overwrite and state.is_main_process:
        clear_earlier_run(output_dir)
    state.wait_for_everyone()

    tokenizer = load_tokenizer(base)
    with args.main_process_first(desc="dataset preparation"):
        blocks = prepare_datasets(data, tokenizer, block_size, eval_fraction, text_column, num_proc, cache_dir)
    metrics = train_and_save(
        base, chosen, args, blocks, tokenizer, torch_dtype, output_dir, resume=resume,
        lora=(lora_r, lora_alpha, lora_dropout, lora_target_modules), rank_checksums=rank_checksums,
    )
    result = FinetuneResult(
        output_dir=output_dir,
        merged_dir=output_dir / MERGED,
        adapter_dir=output_dir / ADAPTER if chosen.adapter else None,
        keras_preset_dir=output_dir / KERAS_PRESET if export_keras else None,
        metrics=metrics,
    )
    if state.is_main_process:
        publish(result, base, chosen, torch_dtype, tokenizer)
    state.wait_for_everyone()
    return result


def last_complete_checkpoint(folder: Path) -> str | None:
    """The newest `checkpoint-N` whose `trainer_state.json` (the file `Trainer` writes last) is whole: a run killed
    while saving leaves a newer, partial checkpoint, which resuming skips (training rewrites it at step N)."""
    steps = {int(match.group(1)): path for path in (folder.iterdir() if folder.is_dir() else ())
             if (match := CHECKPOINT_FOLDER.fullmatch(path.name)) and path.is_dir()}
    for step in sorted(steps, reverse=True):
        try:
            json.loads((steps[step] / TRAINER_STATE_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            logger.warning(f"resume: skipping {steps[step]}, saved only in part (the run was stopped while saving it).")
            continue
        return str(steps[step])
    return None


def is_final_checkpoint(checkpoint: str | None, args: TrainingArguments) -> bool:
    """Whether `checkpoint` already holds all `max_steps` (a run stopped after training, while saving its outputs)."""
    if checkpoint is None or args.max_steps <= 0:
        return False
    return TrainerState.load_from_json(str(Path(checkpoint) / TRAINER_STATE_NAME)).global_step >= args.max_steps


def load_final_checkpoint(trainer: Trainer, checkpoint: str) -> TrainOutput:
    """Load a finished run's last checkpoint without training: transformers 5.24's `train(resume_from_checkpoint=)`
    would run one step past `max_steps` when resuming mid-epoch at it. The training loss is the mean logged loss."""
    trainer._load_from_checkpoint(checkpoint)
    trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / TRAINER_STATE_NAME))
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return TrainOutput(trainer.state.global_step, sum(losses) / max(len(losses), 1), {})


def train_and_save(base, recipe: Recipe, args: TrainingArguments, blocks, tokenizer, dtype: torch.dtype,
                   output_dir: Path, *, resume: bool, lora: tuple, rank_checksums: bool) -> dict:
    """Build the model, train (from the last checkpoint with `resume`) with evaluations, save adapter or model."""
    set_seed(args.seed)  # adapter initialization happens before Trainer seeds anything
    model = load_base_model(base, dtype, recipe.quantize_4bit)
    model.config.use_cache = False  # no KV cache while training (and it conflicts with gradient checkpointing)
    if recipe.adapter:
        model = add_adapter(model, recipe, *lora, gradient_checkpointing=args.activation_checkpointing)
    trainer = PerplexityTrainer(
        model=model, args=args, train_dataset=blocks[TRAIN_SPLIT], eval_dataset=blocks[EVAL_SPLIT],
        processing_class=tokenizer, data_collator=default_data_collator,
    )
    warn_if_fsdp_dropped(trainer)
    checkpoint = last_complete_checkpoint(Path(args.output_dir)) if resume else None
    if resume and checkpoint is None:
        logger.warning(f"resume: no checkpoint in {args.output_dir}; starting from the base model.")
    if is_final_checkpoint(checkpoint, args):
        train_output = load_final_checkpoint(trainer, checkpoint)
    else:
        train_output = trainer.train(resume_from_checkpoint=checkpoint)
    evaluations = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    before = evaluations[0]  # eval_on_start's, at step 0 (kept in the checkpoint's history when resuming)
    after = evaluations[-1] if evaluations[-1]["step"] == trainer.state.global_step else trainer.evaluate()
    if rank_checksums:
        write_rank_checksum(trainer, output_dir)
    trainer.save_model(str(output_dir / (ADAPTER_STAGING if recipe.adapter else FULL_STAGING)))
    return {
        "recipe": recipe.name,
        "base": os.fspath(base),
        "resumed_from": checkpoint,
        "train_blocks": blocks[TRAIN_SPLIT].num_rows,
        "eval_blocks": blocks[EVAL_SPLIT].num_rows,
        "block_size": len(blocks[TRAIN_SPLIT][0]["input_ids"]),
        "world_size": args.world_size,
        "global_step": train_output.global_step,
        "train_loss": train_output.training_loss,
        "eval_loss_before": before["eval_loss"],
        "eval_perplexity_before": before["eval_perplexity"],
        "eval_loss": after["eval_loss"],
        "eval_perplexity": after["eval_perplexity"],
        "log_history": trainer.state.log_history,
    }


def publish(result: FinetuneResult, base, recipe: Recipe, dtype: torch.dtype, tokenizer) -> None:
    """Main process: write the merged folder, the optional Keras preset and `metrics.json`."""
    if recipe.adapter:
        publish_staged_folder(result.output_dir / ADAPTER_STAGING, result.adapter_dir)
        write_merged_lora(base, dtype, result.adapter_dir, result.merged_dir, tokenizer)
    else:
        publish_staged_folder(result.output_dir / FULL_STAGING, result.merged_dir)
    logger.info(f"Merged model written to {result.merged_dir}")
    if result.keras_preset_dir is not None:
        export_keras_preset(result.merged_dir, result.keras_preset_dir, force=True)
        logger.info(f"Keras preset written to {result.keras_preset_dir}")
    write_metrics(result.output_dir / METRICS_FILE, result.metrics)


__all__ = ["DEFAULT_BASE", "RECIPES", "FinetuneResult", "Recipe", "finetune"]
