"""The offline demo: convert the embedded Shakespeare preset and generate through `pipeline("text-generation")`."""

import tempfile
from pathlib import Path

from transformers import pipeline, set_seed
from transformers.utils import logging

from .conversion import convert_keras_preset

logger = logging.get_logger(__name__)

DEFAULT_PROMPTS = ("ROMEO:", "First Citizen:\nBefore we proceed")


def demo(
    prompts: list[str] | tuple[str, ...] = DEFAULT_PROMPTS,
    max_new_tokens: int = 60,
    preset: str = "tiny_shakespeare",
    output_dir: str | None = None,
    force: bool = False,
    seed: int = 0,
) -> list[str]:
    """Convert `preset` (default: the embedded tiny Shakespeare Falcon) to an HF folder and continue each prompt.

    The folder is temporary unless `output_dir` is given. Sampling is top-k 40 at temperature 0.8 with a fixed seed,
    so the same command prints the same text.

    Example:

    ```python
    >>> from falcon_hf.demo import demo
    >>> texts = demo(["ROMEO:"], max_new_tokens=20)
    ```
    """
    with tempfile.TemporaryDirectory(prefix="falcon_hf_demo_") as scratch:
        folder = Path(output_dir) if output_dir else Path(scratch) / preset
        convert_keras_preset(preset, folder, force=force)
        generator = pipeline("text-generation", model=str(folder))
        set_seed(seed)
        outputs = generator(list(prompts), max_new_tokens=max_new_tokens, do_sample=True, top_k=40, temperature=0.8,
                            batch_size=len(prompts))
    return [output[0]["generated_text"] for output in outputs]


__all__ = ["demo"]
