"""The `README.md` model card of a converted folder, filled from `model_card_template.md`."""

import datetime
from pathlib import Path
from string import Template

from ..configuration_falcon_hf import FalconHFConfig

TEMPLATE_PATH = Path(__file__).with_name("model_card_template.md")
UNKNOWN = "unknown"


def _saved_with(metadata: dict) -> str:
    if not metadata:
        return "unknown (no metadata.json read)"
    keras, keras_hub, date = (metadata.get(key) or UNKNOWN for key in ("keras_version", "keras_hub_version",
                                                                       "date_saved"))
    return f"Keras {keras}, keras-hub {keras_hub}, on {date}"


def render_model_card(config: FalconHFConfig, source: str, resolved: str, metadata: dict, dtype: str, folder: str,
                      description: str | None = None, parameter_count: int | None = None) -> str:
    """The model card for a conversion of `source` (as given) resolved as `resolved`, with its `metadata.json`
    (`parameter_count` is the fallback when the metadata has none, e.g. from a built-in preset's registry entry).

    Example:

    ```python
    >>> card = render_model_card(FalconHFConfig(), "falcon_refinedweb_1b_en", "kaggle://keras/falcon/keras/"
    ...                          "falcon_refinedweb_1b_en/2", {}, "float32", "falcon-rw-1b-hf")
    >>> card.splitlines()[1]
    'library_name: transformers'
    ```
    """
    from .. import __version__

    parameter_count = metadata.get("parameter_count", parameter_count)
    fields = {
        "title": f"Falcon `{Path(source).name or source}` for transformers",
        "source": source,
        "resolved": resolved,
        "description": description or "A Keras Hub Falcon preset.",
        "parameter_count": f"{parameter_count:,}" if isinstance(parameter_count, int) else UNKNOWN,
        "saved_with": _saved_with(metadata),
        "date_converted": datetime.date.today().isoformat(),
        "dtype": dtype,
        "falcon_hf_version": __version__,
        "folder": folder,
        **{name: getattr(config, name) for name in ("vocab_size", "hidden_size", "num_hidden_layers",
                                                    "num_attention_heads", "intermediate_size", "layer_norm_epsilon",
                                                    "decoder_layer_norm_epsilon")},
    }
    return Template(TEMPLATE_PATH.read_text(encoding="utf-8")).substitute(fields)
