"""Text generation with a Keras Hub Falcon in transformers: the pipeline, then raw `generate` (greedy, sampling, beam).

    python examples/generate.py                                      # the embedded tiny Shakespeare preset
    python examples/generate.py --model path/to/hf_folder --prompt "The meaning of life is"
    python examples/generate.py --max-new-tokens 8                   # a smoke run
"""

import argparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from falcon_hf import FalconHFForCausalLM, FalconHFTokenizer


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--preset", default="tiny_shakespeare", help="Keras preset to load (unless --model)")
    parser.add_argument("--model", default=None, help="HF folder or Hub id instead of a Keras preset")
    parser.add_argument("--prompt", action="append", default=None,
                        help="prompt (repeat for a batch; default: two Shakespeare openings)")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--num-beams", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def load(args):
    if args.model:
        return AutoModelForCausalLM.from_pretrained(args.model), AutoTokenizer.from_pretrained(args.model)
    return FalconHFForCausalLM.from_keras_preset(args.preset), FalconHFTokenizer.from_keras_preset(args.preset)


def main(argv=None) -> dict[str, list[str]]:
    args = parse_args(argv)
    prompts = args.prompt or ["ROMEO:", "First Citizen:\nBefore we proceed"]
    model, tokenizer = load(args)
    model.eval()
    results = {}

    # 1. The pipeline: tokenization, left padding of the batch, generation and decoding in one call.
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    torch.manual_seed(args.seed)
    outputs = generator(prompts, max_new_tokens=args.max_new_tokens, do_sample=True, top_k=40, temperature=0.8)
    results["pipeline (top-k 40, temperature 0.8)"] = [output[0]["generated_text"] for output in outputs]

    # 2. Raw generate on a left-padded batch (the tokenizer pads on the left: decoder-only generation).
    inputs = tokenizer(prompts, return_tensors="pt", padding=True)
    strategies = {
        "greedy": {"do_sample": False},
        "sampling (top-p 0.9)": {"do_sample": True, "top_p": 0.9, "top_k": 0},
        f"beam search ({args.num_beams} beams)": {"do_sample": False, "num_beams": args.num_beams},
    }
    for name, options in strategies.items():
        torch.manual_seed(args.seed)
        output = model.generate(**inputs, max_new_tokens=args.max_new_tokens, **options)
        results[name] = tokenizer.batch_decode(output, skip_special_tokens=True)

    for name, texts in results.items():
        print(f"\n=== {name} ===")
        for text in texts:
            print(f"{text}\n---")
    return results


if __name__ == "__main__":
    main()
