"""falcon-hf: Keras Hub's Falcon as a first-class transformers model.

`import falcon_hf` registers the `falcon_hf` model type with the Auto classes (and peft's default LoRA targets);
registration is idempotent.

Example:

```python
>>> import falcon_hf
>>> from transformers import AutoConfig
>>> AutoConfig.for_model("falcon_hf").model_type
'falcon_hf'
```
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

from .compilation import enable_compiled_decoding
from .configuration_falcon_hf import FalconHFConfig
from .conversion import ConversionError, convert_keras_preset, export_keras_preset, export_native
from .modeling_falcon_hf import FalconHFForCausalLM, FalconHFModel, FalconHFPreTrainedModel
from .peft_integration import register_peft_targets
from .tokenization_falcon_hf import FalconHFTokenizer

__version__ = "0.1.0"


def register() -> None:
    """Register `falcon_hf` with transformers' Auto classes; safe to call more than once."""
    AutoConfig.register(FalconHFConfig.model_type, FalconHFConfig, exist_ok=True)
    AutoModel.register(FalconHFConfig, FalconHFModel, exist_ok=True)
    AutoModelForCausalLM.register(FalconHFConfig, FalconHFForCausalLM, exist_ok=True)
    AutoTokenizer.register(FalconHFConfig, fast_tokenizer_class=FalconHFTokenizer, exist_ok=True)
    # `auto_map` in saved folders lets `trust_remote_code=True` users load them without importing the plugin.
    FalconHFConfig.register_for_auto_class()
    FalconHFModel.register_for_auto_class("AutoModel")
    FalconHFForCausalLM.register_for_auto_class("AutoModelForCausalLM")
    FalconHFTokenizer.register_for_auto_class("AutoTokenizer")
    register_peft_targets()  # peft's default LoRA targets for `falcon_hf`; a no-op without peft


register()

LAZY_SUBMODULES = ("models", "samplers")
"""keras-hub style `falcon_hf.models.FalconCausalLM` / `falcon_hf.samplers.TopKSampler`, imported on first use."""


def __getattr__(name: str):
    if name in LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ConversionError",
    "convert_keras_preset",
    "enable_compiled_decoding",
    "export_keras_preset",
    "export_native",
    "FalconHFConfig",
    "FalconHFForCausalLM",
    "FalconHFModel",
    "FalconHFPreTrainedModel",
    "FalconHFTokenizer",
    "register",
]
