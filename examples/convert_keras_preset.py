"""Keras Hub Falcon preset -> HF folder -> back to Keras, and to transformers' built-in `falcon`, checking logits.

    python examples/convert_keras_preset.py                                        # the embedded tiny preset
    python examples/convert_keras_preset.py --preset falcon_refinedweb_1b_en --dtype bfloat16   # the 1.31B model
    python examples/convert_keras_preset.py --skip-keras                           # no keras-hub comparison

Every step is a library call (`falcon_hf.conversion`), the same code as `falcon-hf convert-keras / export-keras /
export-native`; outputs go to `--output-dir`.
"""

import argparse
import os
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")  # keras-hub runs on torch here, set before keras is imported

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from falcon_hf.conversion import convert_keras_preset, export_keras_preset, export_native, resolve_preset

PROMPT = "ROMEO:\nWhat light through yonder window breaks?"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--preset", default="tiny_shakespeare",
                        help="preset folder, kaggle:// or hf:// handle, or built-in name")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/convert"))
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                        help="weights dtype of the HF folder (float32 makes the comparisons exact)")
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--skip-keras", action="store_true", help="do not run keras-hub for the comparisons")
    return parser.parse_args(argv)


def hf_logits(folder: Path, prompt: str) -> torch.Tensor:
    """Logits of `prompt` by whatever model the folder holds, through the Auto classes, in float32."""
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    inputs = AutoTokenizer.from_pretrained(folder)(prompt, return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).logits[0]


def keras_logits(preset: str | Path, prompt: str) -> torch.Tensor:
    """keras-hub's logits of the same token ids (start token + prompt, as its preprocessor builds them)."""
    import keras_hub

    causal_lm = keras_hub.models.FalconCausalLM.from_preset(str(preset))
    token_ids = causal_lm.preprocessor.tokenizer([prompt])
    start = causal_lm.preprocessor.tokenizer.start_token_id
    token_ids = torch.tensor([[start] + [int(t) for t in token_ids[0]]])
    logits = causal_lm({"token_ids": token_ids, "padding_mask": torch.ones_like(token_ids, dtype=torch.bool)})
    return torch.as_tensor(logits.detach().cpu().numpy()[0], dtype=torch.float32)


def report(name: str, reference: torch.Tensor, other: torch.Tensor) -> float:
    difference = (reference - other).abs().max().item()
    print(f"{name:<48} max |logit difference| = {difference:.2e}")
    return difference


def main(argv=None) -> dict[str, float]:
    args = parse_args(argv)
    hf_dir = convert_keras_preset(args.preset, args.output_dir / "hf", dtype=args.dtype, force=True)
    keras_dir = export_keras_preset(hf_dir, args.output_dir / "keras", force=True)
    native_dir = export_native(hf_dir, args.output_dir / "native", force=True)
    print(f"HF folder: {hf_dir}\nKeras preset (exported back): {keras_dir}\n"
          f"transformers `falcon` folder: {native_dir}\n")

    reference = hf_logits(hf_dir, args.prompt)
    differences = {"native": report("falcon_hf vs transformers' built-in falcon", reference,
                                    hf_logits(native_dir, args.prompt))}
    if not args.skip_keras:
        differences["keras"] = report("falcon_hf vs keras-hub (original preset)", reference,
                                      keras_logits(resolve_preset(args.preset).path, args.prompt))
        differences["keras_round_trip"] = report("falcon_hf vs keras-hub (exported preset)", reference,
                                                 keras_logits(keras_dir, args.prompt))
    return differences


if __name__ == "__main__":
    main()
