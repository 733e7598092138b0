"""Download: fetch the competition's train.csv and test.csv with the Kaggle CLI.

    python -m components.download --out data/digit-recognizer

Credentials come from KAGGLE_USERNAME and KAGGLE_KEY (on a cluster, from a Kubernetes secret),
KAGGLE_API_TOKEN, or ~/.kaggle/kaggle.json; you must have accepted the competition's rules.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from common.errors import InputError
from components.artifacts import atomic_path
from components.cli import run_cli, step_parser
from components.kaggle_csv import check_header

COMPETITION = "digit-recognizer"
NO_CREDENTIALS = (
    "no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY (the fields of kaggle.json; on a cluster, "
    "from the Kubernetes secret the pipeline was compiled with) or save ~/.kaggle/kaggle.json "
    "(kaggle.com > Settings > API > Create New Token)"
)


def has_credentials():
    kaggle_folder = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
    return bool(
        (os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"))
        or os.environ.get("KAGGLE_API_TOKEN")
        or (kaggle_folder / "kaggle.json").is_file()
        or (kaggle_folder / "access_token").is_file()
    )


def kaggle_cli():
    """PATH's Kaggle CLI, or else this Python environment's (its bin/ is not on PATH for `.venv/bin/python -m ...`)."""
    beside = Path(sys.executable).parent / "kaggle"
    found = shutil.which("kaggle") or (str(beside) if beside.is_file() else None)
    if found is None:
        raise InputError("the Kaggle CLI is not installed (pip install kaggle)")
    return found


def download(train_csv: str | Path, test_csv: str | Path, competition: str = COMPETITION) -> dict:
    """Download the competition's files, check their headers, and move them to `train_csv` and `test_csv`.

    Args:
        train_csv: where to write train.csv
        test_csv: where to write test.csv
        competition: the competition's name on Kaggle
    """
    if not has_credentials():
        raise InputError(NO_CREDENTIALS)
    kaggle = kaggle_cli()
    with tempfile.TemporaryDirectory() as folder:
        result = subprocess.run(
            [kaggle, "competitions", "download", "-c", competition, "-p", folder], capture_output=True, text=True
        )
        archive = Path(folder) / f"{competition}.zip"
        if result.returncode != 0 or not archive.is_file():
            said = [line.strip() for line in (result.stderr + result.stdout).splitlines() if line.strip()]
            raise InputError(
                f"kaggle competitions download -c {competition} failed: {said[-1] if said else 'no output'}"
            )
        files = {"train.csv": (train_csv, True), "test.csv": (test_csv, False)}
        try:
            with zipfile.ZipFile(archive) as contents:
                for name in files:
                    if name not in contents.namelist():
                        raise InputError(f"{archive.name}: has no {name} (it holds {', '.join(contents.namelist())})")
                    contents.extract(name, folder)
        except zipfile.BadZipFile as error:
            raise InputError(f"{archive.name}: not a zip archive ({error})") from None
        for name, (_, labelled) in files.items():  # both checked before either is written
            check_header(Path(folder) / name, labelled)
        for name, (target, _) in files.items():
            with atomic_path(target) as temporary:
                shutil.move(Path(folder) / name, temporary)
    return {"train_csv": str(train_csv), "test_csv": str(test_csv)}


def main(argv=None):
    # One folder on the command line for both files, which the pipeline hands on one by one.
    parser = step_parser(download, exclude=("train_csv", "test_csv"))
    parser.add_argument("--out", required=True, help="folder for train.csv and test.csv")
    arguments = vars(parser.parse_args(argv))
    out = Path(arguments.pop("out"))
    run_cli(download, dict(arguments, train_csv=out / "train.csv", test_csv=out / "test.csv"))
    print(f"downloaded train.csv and test.csv to {out}")


if __name__ == "__main__":
    main()
