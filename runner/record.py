"""run.json: what made a local run (profile, parameters, data, packages, code) and how each attempt went;
and the checks that let `--resume` go on only with the same settings and data."""

import datetime
import importlib.metadata
import subprocess
import sys
from pathlib import Path

from common.errors import InputError
from components.artifacts import file_digest, load_json, save_json
from runner import params

RECORD_FILE = "run.json"
DATA_FILES = ("train.csv", "test.csv")
RECORDED_PACKAGES = (
    "tensorflow",
    "tensorflow-cpu",
    "keras",
    "tf2onnx",
    "onnx",
    "onnxruntime",
    "kfp",
    "kfp-kubernetes",
    "numpy",
    "pandas",
    "protobuf",
)
KAGGLE_HELP = (
    "get Kaggle's files with `python -m components.download --out {data}` (the Kaggle CLI needs "
    "~/.kaggle/kaggle.json: kaggle.com > Settings > API > Create New Token), "
    "or download them from https://www.kaggle.com/competitions/digit-recognizer/data"
)


def new_record(profile: str, arguments: dict, data: Path) -> dict:
    """The record of a new run of `profile` with `arguments` on the CSVs in `data`."""
    return {
        "profile": profile,
        "parameters": arguments,
        "command": sys.argv,
        "data": {"folder": str(data), "sha256": {name: file_digest(data / name) for name in DATA_FILES}},
        "packages": {name: version for name in RECORDED_PACKAGES if (version := installed_version(name))},
        "code": code_version(),
        "runs": [],
    }


def start_attempt(out: Path, record: dict, runner: dict | str) -> dict:
    """Add a running attempt to `record` and save it in `out`; returns the attempt."""
    attempt = {"started": now(), "ended": None, "status": "running", "runner": runner, "steps": []}
    record["runs"].append(attempt)
    record["status"] = "running"
    save(out, record)
    return attempt


def finish_attempt(out: Path, record: dict, status: str, steps: list[dict]) -> None:
    """Close the record's last attempt with `status` and its `steps`, and save the record."""
    record["runs"][-1].update(status=status, steps=steps, ended=now())
    record["status"] = status
    save(out, record)


def resumed_settings(
    out: Path, profile: str | None, assignments: list[str] | tuple[str, ...], data: str | Path | None
) -> tuple[str, dict, Path, dict]:
    """The profile, parameters, data folder and record of the interrupted run in `out`, after checking run.json:
    what the user gave again must match, and the data files must be the ones the run started with."""
    record_path = out / RECORD_FILE
    if not record_path.is_file():
        raise SystemExit(f"error: --resume {out}: no {RECORD_FILE} there (the folder `pipeline.py run` made for a run)")
    try:
        record = load_json(record_path, "the record of a run")
    except InputError as error:
        raise SystemExit(f"error: --resume {out}: {error}") from None
    if record.get("status") == "succeeded":
        raise SystemExit(f"error: --resume {out}: that run has finished; its outputs are there")
    profile = profile or record["profile"]
    arguments = {**record["parameters"], **params.parse_params(assignments)}
    differing = sorted(name for name in arguments if arguments[name] != record["parameters"][name])
    if profile != record["profile"] or differing:
        raise SystemExit(
            f"error: --resume {out}: the run was started with other settings "
            f"(profile {record['profile']}{', ' if differing else ''}{', '.join(differing)}); "
            "resume with the same ones, or start a new run"
        )
    data = Path(data or record["data"]["folder"]).resolve()
    check_data_files(data)
    for name, recorded in record["data"]["sha256"].items():
        if file_digest(data / name) != recorded:
            raise SystemExit(
                f"error: --resume {out}: {data / name} is not the file the run started with "
                "(its SHA-256 differs); start a new run"
            )
    return profile, arguments, data, record


def check_data_files(data: Path) -> None:
    """A one-line error unless `data` holds train.csv and test.csv."""
    for name in DATA_FILES:
        if not (data / name).is_file():
            raise SystemExit(f"error: {data / name} not found; {KAGGLE_HELP.format(data=data)}")


def save(out: Path, record: dict) -> None:
    save_json(out / RECORD_FILE, record)


def now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def installed_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def code_version() -> dict | None:
    """The git commit of this code and whether the tree differs from it; None outside a git checkout."""
    root = Path(__file__).resolve().parent.parent

    def git(*arguments):
        return subprocess.run(["git", "-C", str(root), *arguments], capture_output=True, text=True)

    try:
        commit = git("rev-parse", "HEAD")
    except FileNotFoundError:  # no git here
        return None
    if commit.returncode != 0:
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(git("status", "--porcelain").stdout.strip())}
