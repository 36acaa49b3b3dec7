"""The one error type every converter raises for bad input."""


class ConversionError(ValueError):
    """Malformed or unsupported input to a converter: the message names the file and, where one is at fault, the weight.

    The CLI prints it as one line and exits with status 2; nothing is left at the destination.

    Example:

    ```python
    >>> from falcon_hf.conversion import ConversionError, convert_keras_preset
    >>> try:
    ...     convert_keras_preset("/no/such/preset", "/tmp/out")
    ... except ConversionError as error:
    ...     print("refused:", error)
    ```
    """

    def __init__(self, message: str):
        super().__init__(str(message).replace("\n", " "))  # one line: the CLI prints it as such
