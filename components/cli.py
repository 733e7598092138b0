"""Every step's command line, derived from its function: one flag per parameter, one-line errors instead of tracebacks.

The step function is the one place each option is written. Its signature gives the flags (`seed` becomes
`--seed`), their types (int, float, str, bool; `str | Path` passes the text as it is), their defaults and which
are required (those without one); the `Args:` section of its docstring gives each one's help. A bool becomes a
pair of flags (`--augment` and `--no-augment`).
"""

import argparse
import inspect
import sys
import types
import typing

from common.errors import InputError
from components import progress

OPTION_TYPES = (int, float, str, bool)


def run_cli(step, arguments):
    """Call `step(**arguments)`; on bad input print one line naming the fault and exit 2."""
    try:
        return step(**arguments)
    except InputError as error:
        progress.fail(f"error: {error}")  # on stderr; marked inside a pipeline step, for the local runner's console
        raise SystemExit(2) from None


def run_step(step, given, **arguments):
    """`run_cli` for a KFP wrapper: `arguments` (its artifacts' paths, its renamed options), and every parameter of
    `step` that the wrapper was given under the same name (`given`: its locals() before anything else), so an
    option of the step is written in the wrapper's signature and nowhere else in it."""
    parameters = inspect.signature(step).parameters
    options = {
        name: value
        for name, value in given.items()
        if name in parameters and name not in arguments and isinstance(value, OPTION_TYPES)
    }
    return run_cli(step, {**options, **arguments})


def signature_defaults(function):
    """The keyword defaults of a step function: the one place each default is written."""
    return {
        name: parameter.default
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }


def argument_help(function):
    """{parameter: its help} from the `Args:` section of a Google-style docstring (an indented line continues one)."""
    lines = inspect.cleandoc(function.__doc__ or "").splitlines()
    if "Args:" not in lines:
        return {}
    helps, name, indent = {}, None, None
    for line in lines[lines.index("Args:") + 1 :]:
        if not line.strip() or not line.startswith(" "):  # a blank line or the next section ends it
            break
        depth = len(line) - len(line.lstrip())
        indent = indent or depth
        if depth > indent:
            helps[name] += " " + line.strip()
        else:
            name, _, text = line.strip().partition(":")
            helps[name] = text.strip()
    return helps


def option_type(step, name, annotation):
    """The type argparse converts a parameter's text to, from its annotation."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    members = [
        member for member in (typing.get_args(annotation) if union else (annotation,)) if member is not type(None)
    ]
    if str in members:  # a path as the user wrote it
        return str
    if len(members) == 1 and members[0] in OPTION_TYPES:
        return members[0]
    raise TypeError(
        f"{step.__name__}({name}): a command-line option is int, float, str, bool or str | Path, not {annotation}"
    )


def step_parser(step, choices=None, aliases=None, exclude=()):
    """An argparse parser with a flag for each parameter of `step` but those in `exclude` (the main fills them in).

    `choices` maps a parameter to its allowed values; `aliases` maps a parameter to a second flag (one that the
    documentation has always shown, such as `--metrics` for `metrics_json`).
    """
    choices, aliases = choices or {}, aliases or {}
    module = sys.modules[step.__module__]  # __main__ under `python -m`, whose spec still names the module
    parser = argparse.ArgumentParser(
        prog=f"python -m {getattr(module.__spec__, 'name', step.__module__)}",
        description=module.__doc__.splitlines()[0],
    )
    parameters = inspect.signature(step).parameters
    helps = argument_help(step)
    if sorted(helps) != sorted(parameters):
        raise ValueError(
            f"{step.__name__}: its docstring's Args section names {', '.join(helps) or 'nothing'}, "
            f"its signature {', '.join(parameters)}"
        )
    unknown = (set(choices) | set(aliases) | set(exclude)) - set(parameters)
    if unknown:
        raise ValueError(f"{step.__name__} has no parameter {', '.join(sorted(unknown))}")
    for name, parameter in parameters.items():
        if name in exclude:
            continue
        kind = option_type(step, name, parameter.annotation)
        flag = f"--{name.replace('_', '-')}"
        flags = [flag, *([aliases[name]] if name in aliases else [])]
        required = parameter.default is inspect.Parameter.empty
        text = helps[name].replace("%", "%%")
        if not required and parameter.default not in (None, "") and "(default" not in text:
            shown = f"--{'' if parameter.default else 'no-'}{flag[2:]}" if kind is bool else "%(default)s"
            text += f" (default: {shown})"
        if kind is bool:
            conversion = dict(action=argparse.BooleanOptionalAction)
        else:
            conversion = dict(type=kind, choices=choices.get(name))
        parser.add_argument(
            *flags,
            dest=name,
            required=required,
            default=None if required else parameter.default,
            help=text,
            **conversion,
        )
    return parser


def command_line(step, argv=None, choices=None, aliases=None, exclude=()):
    """Parse `argv` (the process's arguments by default) with `step_parser`, then `run_cli` the step; its result.

    Parameters in `exclude` keep their defaults.
    """
    return run_cli(step, vars(step_parser(step, choices, aliases, exclude).parse_args(argv)))
