"""Full fine-tuning of the embedded tiny Shakespeare Falcon, exported back to a Keras preset and run by keras-hub.

Every weight trains (no adapters); the result is an HF folder (`OUTPUT/merged`) and, with the Keras export, a preset
that `keras_hub.models.FalconCausalLM.from_preset` loads. The script checks that both continue a prompt with the same
greedy text.

    python examples/finetune_full.py                                   # 100 steps, a few minutes on CPU
    python examples/finetune_full.py --max-steps 2 --block-size 32     # a smoke run
"""

import argparse
import os
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")  # keras-hub runs on torch here, set before keras is imported

from transformers import AutoModelForCausalLM, AutoTokenizer

from falcon_hf.recipes import finetune

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHAKESPEARE, help="training text (its last 10%% is held out)")
    parser.add_argument("--base", default="tiny_shakespeare", help="Keras preset or HF folder to start from")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/finetune_full"))
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--per-device-batch-size", type=int, default=8)
    parser.add_argument("--prompt", default="JULIET:")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--skip-keras", action="store_true", help="do not load the exported preset with keras-hub")
    return parser.parse_args(argv)


def hf_greedy(folder: Path, prompt: str, max_new_tokens: int) -> tuple[str, int]:
    """A greedy continuation of `prompt` with transformers, and the length of the whole sequence in tokens."""
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    output = model.generate(**tokenizer(prompt, return_tensors="pt"), max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(output[0], skip_special_tokens=True), output.shape[1]


def keras_greedy(preset: Path, prompt: str, max_length: int) -> str:
    """The same with keras-hub (its preprocessor prepends the start token, as the converted tokenizer does)."""
    import keras_hub

    causal_lm = keras_hub.models.FalconCausalLM.from_preset(str(preset))
    causal_lm.compile(sampler="greedy")  # keras-hub's compile() defaults to top-k
    return causal_lm.generate(prompt, max_length=max_length)


def main(argv=None) -> dict:
    args = parse_args(argv)
    result = finetune(args.data, args.output_dir, base=args.base, recipe="full", max_steps=args.max_steps,
                      learning_rate=args.learning_rate, block_size=args.block_size,
                      per_device_batch_size=args.per_device_batch_size, save_steps=max(args.max_steps, 1),
                      logging_steps=max(1, args.max_steps // 10), export_keras=True, overwrite=True)
    metrics = result.metrics
    print(f"\nheld-out perplexity: {metrics['eval_perplexity_before']:.2f} before, {metrics['eval_perplexity']:.2f} "
          f"after {metrics['global_step']} full fine-tuning steps")
    hf_text, length = hf_greedy(result.merged_dir, args.prompt, args.max_new_tokens)
    print(f"\ntransformers, greedy:\n{hf_text}")
    keras_text = None
    if not args.skip_keras:
        keras_text = keras_greedy(result.keras_preset_dir, args.prompt, length)
        verdict = "the same text" if keras_text == hf_text else f"DIFFERENT:\n{keras_text}"
        print(f"\nkeras-hub, from {result.keras_preset_dir}: {verdict}")
    return {"metrics": metrics, "hf_text": hf_text, "keras_text": keras_text}


if __name__ == "__main__":
    main()
