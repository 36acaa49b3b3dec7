"""`falcon-hf`: a thin command line over the library. Each sub-command parses its arguments and calls the library
function of the same name with the same parameter names; a `ConversionError` (or the fine-tuning recipes'
`RecipeError`) becomes one line on stderr and exit 2.

Sub-commands live in the `COMMANDS` table; add one with a `Command(...)` entry (the function may be a
`"module:function"` string so that `--help` stays fast).

Example:

```bash
falcon-hf convert-keras falcon_refinedweb_1b_en falcon-rw-1b-hf --dtype bfloat16
falcon-hf export-keras falcon-rw-1b-hf falcon_rw_1b_keras
falcon-hf export-native falcon-rw-1b-hf falcon-rw-1b-native
```
"""

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

EXIT_INPUT_ERROR = 2


@dataclass(frozen=True)
class Argument:
    """One `add_argument` call: flags and keyword options; `dest` must be the library parameter's name."""

    flags: tuple[str, ...]
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Command:
    """A sub-command: its name, the library function it calls (or `"module:function"`), help and arguments."""

    name: str
    function: Callable | str
    help: str
    arguments: tuple[Argument, ...] = ()

    def resolve(self) -> Callable:
        if callable(self.function):
            return self.function
        module, _, name = self.function.partition(":")
        return getattr(importlib.import_module(module), name)


FORCE = Argument(("--force",), {"action": "store_true", "help": "replace DST if it exists"})
HF_DIR = Argument(("hf_dir",), {"metavar": "HF_DIR", "help": "folder written by convert-keras or save_pretrained"})


def _dst(what: str) -> Argument:
    return Argument(("dst",), {"metavar": "DST", "help": f"{what} to create (built next to it, renamed at the end)"})


def _finetune_arguments() -> tuple[Argument, ...]:
    """`falcon-hf finetune` arguments, each `dest` a parameter of `falcon_hf.recipes.finetune` (defaults live there)."""

    def option(name: str, help: str, **options) -> Argument:
        # SUPPRESS: an option not given is not passed at all, so the library's default applies.
        return Argument(("--" + name.replace("_", "-"),),
                        {"dest": name, "default": argparse.SUPPRESS, "help": help, **options})

    def switch(name: str, help: str) -> Argument:  # tri-state: unset keeps the library's choice
        return option(name, help, action=argparse.BooleanOptionalAction)

    def flag(name: str, help: str) -> Argument:
        return option(name, help, action="store_true")

    return (
        Argument(("data",), {"metavar": "DATA",
                             "help": "text/JSONL/CSV file or folder, or a datasets save_to_disk folder"}),
        Argument(("output_dir",), {"metavar": "OUTPUT_DIR",
                                   "help": "run folder: checkpoints/, adapter/, merged/, metrics.json"}),
        option("base", "HF folder, Hub id or Keras preset (default: the embedded tiny_shakespeare)"),
        option("recipe", "lora (default), qlora (needs bitsandbytes and a CUDA GPU) or full",
               choices=["lora", "qlora", "full"]),
        option("block_size", "tokens per training block (default: 128)", type=int),
        option("eval_fraction", "held-out tail when DATA has no eval split (default: 0.1)", type=float),
        option("text_column", "text column of JSONL/CSV/datasets data (default: text)"),
        option("max_steps", "optimizer steps (default: -1, i.e. --num-train-epochs)", type=int),
        option("num_train_epochs", "epochs when --max-steps is not given (default: 1)", type=float),
        option("per_device_batch_size", "blocks per step per process (default: 8)", type=int),
        option("gradient_accumulation_steps", "steps per optimizer update (default: 1)", type=int),
        option("learning_rate", "peak learning rate (default: the recipe's, 2e-4 LoRA / 2e-5 full)", type=float),
        option("lr_scheduler_type", "transformers scheduler name (default: cosine)"),
        option("warmup_ratio", "fraction of steps of linear warmup (default: 0.03)", type=float),
        option("weight_decay", "AdamW weight decay (default: 0)", type=float),
        option("lora_r", "LoRA rank (default: 8)", type=int),
        option("lora_alpha", "LoRA alpha (default: 16)", type=int),
        option("lora_dropout", "LoRA dropout (default: 0.05)", type=float),
        option("lora_target_modules", "modules to adapt, or all-linear (default: peft's, query_key_value)",
               nargs="+"),
        switch("gradient_checkpointing", "recompute activations (default: the recipe's, on for qlora)"),
        switch("bf16", "bf16 mixed precision (default: on GPUs that support it)"),
        option("dtype", "dtype the base model is loaded in (default: float32; bfloat16 for qlora)",
               choices=["float32", "bfloat16", "float16"]),
        option("eval_steps", "evaluate every N steps (default: --save-steps)", type=int),
        option("save_steps", "checkpoint every N steps (default: 200)", type=int),
        option("save_total_limit", "checkpoints kept (default: 2)", type=int),
        option("logging_steps", "log the loss every N steps (default: 10)", type=int),
        flag("resume", "continue from the last checkpoint in OUTPUT_DIR"),
        flag("overwrite", "remove an earlier run's outputs from OUTPUT_DIR first"),
        flag("export_keras", "also write OUTPUT_DIR/keras_preset"),
        option("seed", "seed of adapter init, data order, dropout (default: 42)", type=int),
        option("num_proc", "processes for tokenization (default: by document count)", type=int),
        option("cache_dir", "datasets cache folder (default: datasets' own)"),
        switch("use_cpu", "train on CPU (default: when no accelerator is visible)"),
        switch("disable_tqdm", "hide progress bars"),
        flag("rank_checksums", "write OUTPUT_DIR/rank_checksums/rank-R.json (weights' SHA-256 per process)"),
    )


COMMANDS: list[Command] = [
    Command(
        "convert-keras", "falcon_hf.conversion:convert_keras_preset",
        "Keras Hub Falcon preset -> HF folder (config, safetensors, tokenizer, model card).",
        (
            Argument(("src",), {"metavar": "SRC", "help": "preset folder, kaggle://owner/model/framework/variation"
                                "/version, hf://owner/repo, or a built-in name such as falcon_refinedweb_1b_en"}),
            _dst("HF folder"),
            Argument(("--dtype",), {"choices": ["float32", "bfloat16", "float16"], "default": None,
                                    "help": "cast the weights on the way (default: keep the stored dtype)"}),
            FORCE,
            Argument(("--check",), {"action": "store_true", "help": "refuse NaN or infinite weights"}),
            # SUPPRESS: when not given, the library's default shard size applies.
            Argument(("--max-shard-size",), {"dest": "max_shard_size", "default": argparse.SUPPRESS,
                                             "help": "largest safetensors file, e.g. 500MB (default: 5GB)"}),
        ),
    ),
    Command(
        "export-keras", "falcon_hf.conversion:export_keras_preset",
        "HF folder -> Keras Hub preset that keras_hub.models.FalconCausalLM.from_preset loads.",
        (HF_DIR, _dst("Keras preset folder"), FORCE),
    ),
    Command(
        "export-native", "falcon_hf.conversion:export_native",
        "HF folder -> transformers' built-in `falcon` checkpoint (loads without falcon_hf).",
        (HF_DIR, _dst("HF folder"), FORCE),
    ),
    Command(
        "demo", "falcon_hf.demo:demo",
        "Convert the embedded tiny Shakespeare Falcon and continue prompts through pipeline('text-generation').",
        (
            Argument(("prompts",), {"metavar": "PROMPT", "nargs": "*", "default": ["ROMEO:", "First Citizen:\nBefore we proceed"],
                                    "help": "prompts to continue (default: two Shakespeare openings)"}),
            Argument(("--max-new-tokens",), {"dest": "max_new_tokens", "type": int, "default": 60}),
            Argument(("--preset",), {"default": "tiny_shakespeare", "help": "any Keras Falcon preset (default: the embedded one)"}),
            Argument(("--output-dir",), {"dest": "output_dir", "default": None,
                                         "help": "keep the converted HF folder here (default: a temporary folder)"}),
            FORCE,
            Argument(("--seed",), {"type": int, "default": 0}),
        ),
    ),
    Command(
        "finetune", "falcon_hf.recipes:finetune",
        "Fine-tune with LoRA (default), QLoRA or fully, then merge; runs under accelerate launch / torchrun too.",
        _finetune_arguments(),
    ),
]


def build_parser(commands: Sequence[Command] = ()) -> argparse.ArgumentParser:
    """The `falcon-hf` parser with one sub-parser per command of `commands` (default: `COMMANDS`)."""
    parser = argparse.ArgumentParser(prog="falcon-hf", description="Keras Hub's Falcon in transformers.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in commands or COMMANDS:
        subparser = subparsers.add_parser(command.name, help=command.help, description=command.help)
        for argument in command.arguments:
            subparser.add_argument(*argument.flags, **argument.options)
        subparser.set_defaults(_command=command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `falcon-hf` with `argv` (default: `sys.argv[1:]`); returns the exit status.

    Example:

    ```python
    >>> main(["convert-keras", "falcon_refinedweb_1b_en", "falcon-rw-1b-hf"])
    0
    ```
    """
    from .conversion import ConversionError
    from .recipes.errors import RecipeError

    arguments = vars(build_parser().parse_args(argv))
    command: Command = arguments.pop("_command")
    arguments.pop("command")
    try:
        result = command.resolve()(**arguments)
    except (ConversionError, RecipeError) as error:
        print(f"falcon-hf {command.name}: error: {error}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    for line in result if isinstance(result, list) else [] if result is None else [result]:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
