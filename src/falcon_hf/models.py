"""keras-hub's `keras_hub.models` names for Falcon: `falcon_hf.models.FalconCausalLM` and friends.

Example:

```python
>>> from falcon_hf.models import FalconCausalLM
>>> FalconCausalLM.presets["falcon_refinedweb_1b_en"]["metadata"]["params"]
1311625216
```
"""

from .keras_compat import FalconBackbone, FalconCausalLM, FalconCausalLMPreprocessor, FalconTokenizer

__all__ = ["FalconBackbone", "FalconCausalLM", "FalconCausalLMPreprocessor", "FalconTokenizer"]
