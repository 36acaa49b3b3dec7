"""The one error type of the fine-tuning recipes."""


class RecipeError(ValueError):
    """Bad fine-tuning input (data, base model, recipe, output folder); the message names what and where."""


__all__ = ["RecipeError"]
