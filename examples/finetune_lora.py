"""LoRA fine-tuning of the embedded tiny Shakespeare Falcon, then merge, then generation before and after.

Runs offline on CPU in a few minutes with the defaults (one `finetune` call: the same code as `falcon-hf finetune`):

    python examples/finetune_lora.py                                  # 200 steps, held-out perplexity before/after
    python examples/finetune_lora.py --max-steps 2 --block-size 32    # a smoke run
"""

import argparse
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from falcon_hf import FalconHFForCausalLM, FalconHFTokenizer
from falcon_hf.recipes import finetune

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHAKESPEARE, help="training text (its last 10%% is held out)")
    parser.add_argument("--base", default="tiny_shakespeare", help="Keras preset or HF folder to start from")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/finetune_lora"))
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--learning-rate", type=float, default=1e-3,
                        help="above the recipe's 2e-4: a 2M-parameter model with rank-8 adapters moves slowly")
    parser.add_argument("--block-size", type=int, default=128, help="the preset's training sequence length")
    parser.add_argument("--per-device-batch-size", type=int, default=8)
    parser.add_argument("--save-steps", type=int, default=100)
    parser.add_argument("--prompt", default="ROMEO:")
    parser.add_argument("--max-new-tokens", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def continuations(model, tokenizer, prompt: str, max_new_tokens: int, seed: int) -> dict[str, str]:
    """Greedy and top-k (k=40, temperature 0.8, seeded) continuations of `prompt`."""
    inputs = tokenizer(prompt, return_tensors="pt")
    settings = {"greedy": {"do_sample": False}, "top-k": {"do_sample": True, "top_k": 40, "temperature": 0.8}}
    texts = {}
    for name, options in settings.items():
        torch.manual_seed(seed)
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, **options)
        texts[name] = tokenizer.decode(output[0], skip_special_tokens=True)
    return texts


def main(argv=None) -> dict:
    args = parse_args(argv)
    base = FalconHFForCausalLM.from_keras_preset(args.base, dtype=torch.float32).eval()
    tokenizer = FalconHFTokenizer.from_keras_preset(args.base)
    before = continuations(base, tokenizer, args.prompt, args.max_new_tokens, args.seed)

    result = finetune(args.data, args.output_dir, base=args.base, recipe="lora", max_steps=args.max_steps,
                      learning_rate=args.learning_rate, block_size=args.block_size,
                      per_device_batch_size=args.per_device_batch_size, save_steps=args.save_steps,
                      logging_steps=max(1, args.max_steps // 10), seed=args.seed, overwrite=True)

    merged = AutoModelForCausalLM.from_pretrained(result.merged_dir).eval()
    after = continuations(merged, AutoTokenizer.from_pretrained(result.merged_dir), args.prompt,
                          args.max_new_tokens, args.seed)
    metrics = result.metrics
    print(f"\nheld-out perplexity: {metrics['eval_perplexity_before']:.2f} before, {metrics['eval_perplexity']:.2f} "
          f"after {metrics['global_step']} LoRA steps (eval loss {metrics['eval_loss_before']:.4f} -> "
          f"{metrics['eval_loss']:.4f})")
    for name in before:
        print(f"\n--- {name}, before ---\n{before[name]}\n--- {name}, after ---\n{after[name]}")
    print(f"\nmerged model: {result.merged_dir}")
    return {"metrics": metrics, "before": before, "after": after}


if __name__ == "__main__":
    main()
