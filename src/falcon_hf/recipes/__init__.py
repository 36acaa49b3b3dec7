"""Fine-tuning recipes: LoRA (default), QLoRA and full fine-tuning with transformers' `Trainer`, and data preparation.

Needs the `train` extra (`pip install falcon-hf[train]`: peft, accelerate, datasets).

Example:

```python
>>> from falcon_hf.recipes import finetune
>>> result = finetune("../shared/data/tinyshakespeare.txt", "runs/lora", base="tiny_shakespeare", max_steps=100)
>>> result.merged_dir
PosixPath('runs/lora/merged')
```
"""

from .data import load_documents, prepare_datasets
from .errors import RecipeError
from .finetune import DEFAULT_BASE, RECIPES, FinetuneResult, Recipe, finetune

__all__ = [
    "DEFAULT_BASE",
    "RECIPES",
    "FinetuneResult",
    "Recipe",
    "RecipeError",
    "finetune",
    "load_documents",
    "prepare_datasets",
]
