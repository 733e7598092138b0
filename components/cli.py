"""What every step's command line shares: one-line errors instead of tracebacks."""
import inspect
import sys

from components.artifacts import InputError


def run_cli(step, arguments):
    """Call `step(**arguments)`; on bad input print one line naming the fault and exit 2."""
    try:
        return step(**arguments)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def signature_defaults(function):
    """The keyword defaults of a step function: the one place each default is written."""
    return {
        name: parameter.default
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
