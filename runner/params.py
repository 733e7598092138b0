"""Pipeline parameters from the command line: `--param NAME=VALUE`, typed by the pipeline's own signature."""

import inspect

import pipeline

DATA_PARAMETERS = ("train_csv", "test_csv")  # set by --data, --train-csv and --test-csv, never by --param


def pipeline_signature() -> dict[str, inspect.Parameter]:
    """The pipeline's parameters, with their types and defaults."""
    return dict(inspect.signature(pipeline.build_pipeline().pipeline_func).parameters)


def parse_params(assignments: list[str] | tuple[str, ...]) -> dict:
    """`["epochs=3", ...]` as typed pipeline arguments; a one-line error for an unknown name or a bad value."""
    signature = pipeline_signature()
    known = sorted(set(signature) - set(DATA_PARAMETERS))
    arguments = {}
    for assignment in assignments:
        name, separator, text = assignment.partition("=")
        if not separator:
            raise SystemExit(f"error: --param {assignment!r}: expected NAME=VALUE")
        if name not in known:
            raise SystemExit(f"error: --param {name!r}: no such pipeline parameter (known: {', '.join(known)})")
        kind = signature[name].annotation
        try:
            arguments[name] = boolean(text) if kind is bool else kind(text)
        except ValueError:
            raise SystemExit(f"error: --param {name}={text!r}: expected {kind.__name__}") from None
    return arguments


def boolean(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def pipeline_arguments(profile: str, params: list[str] | tuple[str, ...]) -> dict:
    """Every pipeline parameter's value for a local run: the pipeline's defaults, then the profile's, then `params`."""
    defaults = {name: p.default for name, p in pipeline_signature().items() if name not in DATA_PARAMETERS}
    return {**defaults, **pipeline.PROFILES[profile], **parse_params(params)}
