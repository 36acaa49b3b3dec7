"""keras-hub's Falcon task API on transformers: switch from keras-hub by changing one import.

`falcon_hf.models` and `falcon_hf.samplers` re-export this package under keras-hub's names:

| keras-hub | falcon-hf | over |
|---|---|---|
| `keras_hub.models.FalconBackbone` | `falcon_hf.models.FalconBackbone` | `FalconHFForCausalLM` |
| `keras_hub.models.FalconTokenizer` | `falcon_hf.models.FalconTokenizer` | `FalconHFTokenizer` |
| `keras_hub.models.FalconCausalLMPreprocessor` | `falcon_hf.models.FalconCausalLMPreprocessor` | the tokenizer |
| `keras_hub.models.FalconCausalLM` | `falcon_hf.models.FalconCausalLM` | `generate`, `GenerationConfig`, torch loop |
| `keras_hub.samplers.*` | `falcon_hf.samplers.*` | `GenerationConfig` settings |

Example:

```python
>>> import falcon_hf
>>> falcon_lm = falcon_hf.models.FalconCausalLM.from_preset("falcon_refinedweb_1b_en")
>>> falcon_lm.generate("I want to say", max_length=30)
```
"""

from . import samplers
from .backbone import FalconBackbone
from .causal_lm import FalconCausalLM
from .preprocessor import FalconCausalLMPreprocessor
from .tokenizer import FalconTokenizer
from .training import History

__all__ = ["FalconBackbone", "FalconCausalLM", "FalconCausalLMPreprocessor", "FalconTokenizer", "History", "samplers"]
