"""The command lines derived from the step functions, and each step module's main built on them."""

import functools
import importlib
import inspect
import re
import shlex
from pathlib import Path

import pytest

from common.errors import InputError
from components.cli import argument_help, command_line, run_cli, signature_defaults, step_parser
from tests.conftest import ROOT

# module: (its step function, the parameters its main fills in itself from other flags, and how)
STEPS = {
    "components.preprocess": (
        "preprocess",
        ["--out-dir", "out"],
        {"train_data": "out/train.npz", "validation_data": "out/validation.npz", "test_data": "out/test.npz"},
    ),
    "components.train": ("train", [], {}),
    "components.export": ("export", [], {}),
    "components.evaluate": ("evaluate", [], {}),
    "components.score": ("score", [], {}),
    "components.report": ("report", [], {}),
    "components.register": ("register", ["--accuracy", "0.99"], {"accuracy": 0.99}),  # a number, not given-accuracy
    "components.download": (
        "download",
        ["--out", "data"],
        {"train_csv": Path("data/train.csv"), "test_csv": Path("data/test.csv")},
    ),
    "components.deploy": ("deploy", [], {}),
}
NOT_OPTIONS = {"components.deploy": {"api_client"}}  # a test's stand-in, never given on the command line
OTHER_CHOICES = {
    "network": "deotte",
    "learning_rate_schedule": "constant",
    "mixed_precision": "off",
    "keep_epoch": "last",
}


class Called(Exception):
    """Raised by a recorded step instead of running it."""


@pytest.fixture
def recorded(monkeypatch):
    """`recorded(module)` swaps the module's step for one that records its arguments; returns (real step, calls)."""
    calls = []

    def record(module_name):
        module = importlib.import_module(module_name)
        real = getattr(module, STEPS[module_name][0])

        @functools.wraps(real)  # the same signature and docstring, which the command line is derived from
        def step(**arguments):
            calls.append(arguments)
            raise Called

        monkeypatch.setattr(module, real.__name__, step)
        return module, real, calls

    return record


def options(module_name, real):
    """The parameters of `real` that are flags of the module's command line."""
    filled = set(STEPS[module_name][2]) | NOT_OPTIONS.get(module_name, set())
    return {name: parameter for name, parameter in inspect.signature(real).parameters.items() if name not in filled}


def flag(name):
    return "--" + name.replace("_", "-")


def required_argv(module_name, real, leave_out=None):
    argv = list(STEPS[module_name][1])
    for name, parameter in options(module_name, real).items():
        if parameter.default is inspect.Parameter.empty and name != leave_out:
            argv += [flag(name), f"given-{name}"]
    return argv


@pytest.mark.parametrize("module_name", STEPS)
def test_every_parameter_is_a_flag_with_its_default(module_name, recorded, capsys):
    module, real, calls = recorded(module_name)
    with pytest.raises(Called):
        module.main(required_argv(module_name, real))
    expected = {
        name: f"given-{name}"
        for name, parameter in options(module_name, real).items()
        if parameter.default is inspect.Parameter.empty
    }
    expected.update(STEPS[module_name][2])
    defaults = signature_defaults(real)
    expected.update({name: defaults[name] for name in options(module_name, real) if name in defaults})
    assert calls == [expected]
    # Nothing more and nothing less on the command line: a forgotten, renamed or extra flag fails here.
    with pytest.raises(SystemExit):
        module.main(["--help"])
    usage = capsys.readouterr().out.partition("\n\n")[0]
    flags = {flag(name) for name in options(module_name, real)} | set(STEPS[module_name][1][::2])
    flags |= {
        "--no-" + flag(name)[2:]
        for name, parameter in options(module_name, real).items()
        if parameter.annotation is bool
    }
    assert set(re.findall(r"--[a-z0-9-]+", usage)) == flags


@pytest.mark.parametrize("module_name", STEPS)
def test_each_flag_converts_to_its_parameter_type_and_bools_are_negatable(module_name, recorded):
    module, real, calls = recorded(module_name)
    argv, expected = required_argv(module_name, real), {}
    for name, parameter in options(module_name, real).items():
        default = parameter.default
        if default is inspect.Parameter.empty:
            continue
        if parameter.annotation is bool:
            argv.append(flag(name) if not default else "--no-" + flag(name)[2:])
            expected[name] = not default
        elif parameter.annotation in (int, float) or parameter.annotation == int | None:
            kind = float if parameter.annotation is float else int
            expected[name] = kind((default or 0) + 3)
            argv += [flag(name), str(expected[name])]
        else:
            expected[name] = OTHER_CHOICES.get(name, f"other-{name}")
            argv += [flag(name), expected[name]]
    with pytest.raises(Called):
        module.main(argv)
    (arguments,) = calls
    for name, value in expected.items():
        assert arguments[name] == value and type(arguments[name]) is type(value), name


@pytest.mark.parametrize("module_name", STEPS)
def test_required_flags_are_required_and_bad_values_get_argparses_one_line_error(module_name, recorded, capsys):
    module, real, calls = recorded(module_name)
    for name, parameter in options(module_name, real).items():
        if parameter.default is inspect.Parameter.empty:
            with pytest.raises(SystemExit) as exit:
                module.main(required_argv(module_name, real, leave_out=name))
            assert exit.value.code == 2
            assert (
                capsys.readouterr()
                .err.splitlines()[-1]
                .startswith(  # (then the flag's documented alias, if any)
                    f"python -m {module_name}: error: the following arguments are required: {flag(name)}"
                )
            )
        elif parameter.annotation in (int, float):
            with pytest.raises(SystemExit) as exit:
                module.main(required_argv(module_name, real) + [flag(name), "many"])
            assert exit.value.code == 2
            assert capsys.readouterr().err.splitlines()[-1] == (
                f"python -m {module_name}: error: argument {flag(name)}: invalid {parameter.annotation.__name__} "
                "value: 'many'"
            )
    assert calls == []


def documented_commands():
    """Every `python -m components.STEP ...` of the documentation's code blocks and of the steps' docstrings."""
    texts = [path.read_text() for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]]
    blocks = [block for text in texts for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S)]
    blocks += [importlib.import_module(module_name).__doc__ for module_name in STEPS]
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            if "python -m components." in line:
                command = line[line.index("python -m components.") :].partition(" #")[0]
                yield tuple(shlex.split(command.replace("[", "").replace("]", ""))[2:])


@pytest.mark.parametrize("command", sorted(set(documented_commands())), ids=" ".join)
def test_the_documented_command_lines_work(command, recorded):
    module, _, calls = recorded(command[0])
    with pytest.raises((Called, SystemExit)) as raised:
        module.main(command[1:])
    assert raised.type is Called or (command[1:] == ("--help",) and raised.value.code == 0)


def toy(
    data: str | Path,
    count: int = 3,
    rate: float = 0.5,
    mode: str = "fast",
    checked: bool = True,
    last: int | None = None,
    out: str | Path | None = None,
):
    """A step to derive a command line from.

    Args:
        data: the input
        count: how many; a long help
            goes on here
        rate: a 50% share
        mode: how
        checked: check it
        last: where to stop (default: the end)
        out: where to write (optional)
    """
    return dict(data=data, count=count, rate=rate, mode=mode, checked=checked, last=last, out=out)


def test_the_parser_follows_the_signature_and_the_args_section(capsys):
    assert command_line(toy, ["--data", "in.csv"]) == dict(
        data="in.csv", count=3, rate=0.5, mode="fast", checked=True, last=None, out=None
    )
    assert command_line(
        toy,
        ["--data", "x", "--count", "4", "--rate", "1", "--no-checked", "--last", "9", "--out", "o", "--mode", "slow"],
    ) == dict(data="x", count=4, rate=1.0, mode="slow", checked=False, last=9, out="o")
    assert argument_help(toy)["count"] == "how many; a long help goes on here"
    step_parser(toy, choices={"mode": ("fast", "slow")}, aliases={"out": "--to"}).print_help()
    text = " ".join(capsys.readouterr().out.split())
    for shown in (
        "--data DATA the input",
        "--count COUNT how many; a long help goes on here (default: 3)",
        "a 50% share (default: 0.5)",
        "--mode {fast,slow} how (default: fast)",
        "--checked, --no-checked check it (default: --checked)",
        "where to stop (default: the end) ",
        "--out OUT, --to OUT where to write (optional)",
    ):
        assert shown in text


def test_a_step_whose_args_section_differs_from_its_signature_has_no_command_line():
    def step(data: str, seed: int = 1):
        """A step.

        Args:
            data: the input
            sed: a typo
        """

    with pytest.raises(
        ValueError, match="step: its docstring's Args section names data, sed, its signature data, seed"
    ):
        step_parser(step)
    with pytest.raises(ValueError, match="toy has no parameter colour"):
        step_parser(toy, choices={"colour": ("red",)})


def test_an_option_needs_a_type_the_command_line_can_give():
    def step(data, rows: list[int]):
        """A step.

        Args:
            data: the input
            rows: which
        """

    with pytest.raises(TypeError, match=r"step\(data\): a command-line option is int, float, str, bool or str \| Path"):
        step_parser(step)
    with pytest.raises(TypeError, match=r"step\(rows\)"):
        step_parser(step, exclude=("data",))


def test_bad_input_is_one_line_and_exit_status_2(capsys):
    def step(path):
        raise InputError(f"{path}: file not found")

    with pytest.raises(SystemExit) as exit:
        run_cli(step, {"path": "none.npz"})
    assert exit.value.code == 2
    assert capsys.readouterr().err == "error: none.npz: file not found\n"
