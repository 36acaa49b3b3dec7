"""Conversions between Keras Hub Falcon presets, falcon_hf folders and transformers' built-in `falcon`.

- `convert_keras_preset(src, dst)`: Keras preset (folder, `kaggle://`, `hf://`, built-in name) -> HF folder.
- `load_model_from_keras_preset(src)`, `load_tokenizer_from_keras_preset(src)`: the same, in memory.
- `export_keras_preset(hf_dir, dst)`: HF folder -> Keras preset (`keras_hub.models.FalconCausalLM.from_preset`).
- `export_native(hf_dir, dst)`: HF folder -> transformers' own `falcon` model type.

All of them read weights with h5py / safetensors only (no TensorFlow, no Keras, no pickle), go through the one table
in `rules.py`, hold about one tensor at a time, and raise `ConversionError` on bad input with nothing written.

Example:

```python
>>> from falcon_hf.conversion import convert_keras_preset, export_keras_preset
>>> convert_keras_preset("falcon_refinedweb_1b_en", "falcon-rw-1b-hf")
PosixPath('falcon-rw-1b-hf')
>>> export_keras_preset("falcon-rw-1b-hf", "falcon_rw_1b_keras")
PosixPath('falcon_rw_1b_keras')
```
"""

from .errors import ConversionError
from .hf_to_keras import export_keras_preset
from .keras_to_hf import convert_keras_preset, load_model_from_keras_preset, load_tokenizer_from_keras_preset
from .native import export_native
from .resolve import BUILTIN_PRESETS, resolve_preset

__all__ = [
    "BUILTIN_PRESETS",
    "ConversionError",
    "convert_keras_preset",
    "export_keras_preset",
    "export_native",
    "load_model_from_keras_preset",
    "load_tokenizer_from_keras_preset",
    "resolve_preset",
]
