"""Teach peft the default adapter targets of `falcon_hf`, so `LoraConfig(task_type="CAUSAL_LM")` needs no module names.

peft picks default targets by `model_type` from dicts in `peft.utils.constants` (`LoraModel.target_module_mapping` is
`TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING` itself, IA3 also reads its feed-forward mapping, and so on for
every tuner). Each tuner module holds a reference to the same dict object, so adding a key to the dicts in
`peft.utils.constants` is seen everywhere; peft's code is left untouched.

Our submodule names are transformers' Falcon ones, so every default peft has for `falcon` is right for `falcon_hf`
too (LoRA: `query_key_value`, the fused per-head QKV projection). Falcon LoRA recipes carry over unchanged.

Example:

```python
>>> import falcon_hf  # registers at import; register_peft_targets() is idempotent
>>> from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as lora_targets
>>> lora_targets["falcon_hf"]
['query_key_value']
```
"""

import copy
import importlib.util

from transformers.utils import logging

logger = logging.get_logger(__name__)

MODEL_TYPE = "falcon_hf"
TEMPLATE_MODEL_TYPE = "falcon"
MAPPING_PREFIX = "TRANSFORMERS_MODELS_TO_"
MAPPING_SUFFIX = "_MAPPING"


def peft_target_mappings() -> dict[str, dict]:
    """peft's per-`model_type` default-target dicts that know transformers' Falcon, by constant name."""
    from peft.utils import constants

    return {
        name: value
        for name, value in vars(constants).items()
        if name.startswith(MAPPING_PREFIX) and name.endswith(MAPPING_SUFFIX)
        and isinstance(value, dict) and TEMPLATE_MODEL_TYPE in value
    }


def register_peft_targets() -> list[str]:
    """Add `falcon_hf` to every peft default-target mapping that has `falcon`, copying its value; idempotent.

    An entry already present (registered before, or set by the user) is left as it is. Returns the names of the
    mappings that hold `falcon_hf` afterwards; without peft installed it does nothing and returns `[]`.

    Example:

    ```python
    >>> "TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING" in register_peft_targets()
    True
    ```
    """
    if importlib.util.find_spec("peft") is None:
        return []
    mappings = peft_target_mappings()
    for name, mapping in mappings.items():
        mapping.setdefault(MODEL_TYPE, copy.deepcopy(mapping[TEMPLATE_MODEL_TYPE]))
    logger.debug(f"Registered {MODEL_TYPE} default adapter targets in {len(mappings)} peft mappings.")
    return sorted(mappings)


__all__ = ["register_peft_targets"]
