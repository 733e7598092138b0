"""The one error of bad input, which a step's command line and the server both report in one line."""


class InputError(ValueError):
    """Bad input: the message names the file, row, column or field at fault."""
