"""keras-hub's `keras_hub.samplers`: `falcon_hf.samplers.TopKSampler(k=5)`, `get("greedy")`, ...

Example:

```python
>>> from falcon_hf import samplers
>>> samplers.get("beam")
BeamSampler(temperature=1.0, num_beams=5, return_all_beams=False)
```
"""

from .keras_compat.samplers import (
    BeamSampler,
    ContrastiveSampler,
    GreedySampler,
    RandomSampler,
    Sampler,
    TopKSampler,
    TopPSampler,
    get,
)

__all__ = ["BeamSampler", "ContrastiveSampler", "GreedySampler", "RandomSampler", "Sampler", "TopKSampler",
           "TopPSampler", "get"]
