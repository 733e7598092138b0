import os
import shutil
import subprocess
import tomllib

import pytest

from tests.conftest import ROOT


def test_make_data_without_files_or_credentials_says_how_to_get_them(tmp_path):
    environment = {key: value for key, value in os.environ.items() if not key.startswith("KAGGLE_")}
    environment["HOME"] = str(tmp_path)  # no ~/.kaggle/kaggle.json
    result = subprocess.run(
        ["make", "-s", "data", f"DATA={tmp_path / 'data'}"], cwd=ROOT, env=environment, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "train.csv and test.csv are missing" in result.stdout
    assert "kaggle.com/competitions/digit-recognizer/data" in result.stdout
    assert "error: no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY" in result.stderr
    assert "kaggle.json" in result.stderr and "Traceback" not in result.stderr


def test_make_data_with_the_files_does_nothing(tmp_path):
    for name in ("train.csv", "test.csv"):
        (tmp_path / name).write_text("x\n")
    result = subprocess.run(["make", "-s", "data", f"DATA={tmp_path}"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout == ""


@pytest.fixture
def project_copy(tmp_path):
    """The Makefile and pyproject.toml beside a venv that exists (stand-ins for python and uv), as `make install`
    leaves them."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    for program in ("python", "uv"):
        (tmp_path / ".venv" / "bin" / program).touch()
    return tmp_path


def make_dry_run(folder, *arguments, gpus_listed):
    """`make -n` (print, run nothing) with a stand-in nvidia-smi on PATH that lists a GPU, or lists none."""
    bin_folder = folder / "stand-in-bin"
    bin_folder.mkdir(exist_ok=True)
    listing = "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0f1e2d3c)" if gpus_listed else ""
    nvidia_smi = bin_folder / "nvidia-smi"
    nvidia_smi.write_text(
        f"#!/bin/sh\necho '{listing}'\n" if gpus_listed else "#!/bin/sh\necho 'No devices were found'\nexit 6\n"
    )
    nvidia_smi.chmod(0o755)
    environment = {**os.environ, "PATH": f"{bin_folder}:{os.environ['PATH']}"}
    for name in ("GPU", "MAKELEVEL", "MAKEFLAGS", "MFLAGS"):  # under `make test`, a nested make would say make[1]
        environment.pop(name, None)
    result = subprocess.run(["make", "-n", *arguments], cwd=folder, env=environment, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_install_picks_tensorflow_with_cuda_where_nvidia_smi_lists_a_gpu(project_copy):
    install = (
        "uv pip install --python .venv/bin/python --quiet --compile-bytecode -e '.[pipeline,tracking,gpu,serve,test]'"
    )
    assert install in make_dry_run(project_copy, "install", gpus_listed=True)
    install = (
        "uv pip install --python .venv/bin/python --quiet --compile-bytecode -e '.[pipeline,tracking,cpu,serve,test]'"
    )
    assert install in make_dry_run(project_copy, "install", gpus_listed=False)
    assert "'.[pipeline,tracking,cpu,serve,test]'" in make_dry_run(project_copy, "install", "GPU=0", gpus_listed=True)
    assert "'.[pipeline,tracking,gpu,serve,test]'" in make_dry_run(project_copy, "install", "GPU=1", gpus_listed=False)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["gpu"] == ["tensorflow[and-cuda]==2.21.0"] and extras["cpu"] == ["tensorflow-cpu==2.21.0"]
    assert not any(requirement.startswith("tensorflow") for requirement in extras["pipeline"])  # never both wheels


def test_install_twice_builds_the_venv_once_and_swaps_the_wheel_on_a_change(project_copy):
    (project_copy / ".venv" / ".installed-gpu").touch()  # as the first make install left it, after pyproject.toml
    assert make_dry_run(project_copy, "install", gpus_listed=True) == "make: Nothing to be done for 'install'.\n"
    swap = make_dry_run(project_copy, "install", "GPU=0", gpus_listed=True)
    assert "-m venv" not in swap  # the same venv ...
    assert (
        ".venv/bin/uv pip uninstall --python .venv/bin/python --quiet tensorflow;" in swap
    )  # ... with the CUDA wheel out, the CPU wheel in
    assert "'.[pipeline,tracking,cpu,serve,test]'" in swap


def test_make_kaggle_submit_uses_the_venvs_cli_and_without_credentials_says_how_to_get_them(tmp_path):
    submission = tmp_path / "submission.csv"
    submission.write_text("ImageId,Label\n1,7\n")
    environment = {key: value for key, value in os.environ.items() if not key.startswith("KAGGLE_")}
    environment["HOME"] = str(tmp_path)  # no ~/.kaggle/kaggle.json
    result = subprocess.run(
        ["make", "-s", "kaggle-submit", f"SUBMISSION={submission}"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert (
        result.stderr.strip()
        .splitlines()[-2]
        .startswith("error: no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY")
    )
    assert "kaggle.com > Settings > API > Create New Token" in result.stderr
    assert "not found" not in result.stderr and "Traceback" not in result.stderr
    environment.update(KAGGLE_USERNAME="someone", KAGGLE_KEY="0123")
    dry_run = subprocess.run(
        ["make", "-n", "kaggle-submit", f"SUBMISSION={submission}"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
    ).stdout
    assert f".venv/bin/kaggle competitions submit -c digit-recognizer -f {submission}" in dry_run
    assert (ROOT / ".venv" / "bin" / "kaggle").is_file()  # the CLI the set-up installs


def test_make_kaggle_submit_without_a_run_says_so(tmp_path):
    result = subprocess.run(
        ["make", "-s", "kaggle-submit", f"SUBMISSION={tmp_path / 'none.csv'}"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert result.stdout.strip() == f"error: {tmp_path / 'none.csv'} not found: run make run first"


def test_images_build_the_cuda_training_image_by_default_whatever_this_machine_has(project_copy):
    for gpus_listed in (False, True):
        commands = make_dry_run(project_copy, "images", gpus_listed=gpus_listed)
        assert (
            "docker build -f Dockerfile.train --build-arg TENSORFLOW=gpu -t digit-recognizer-train:latest ." in commands
        )
        assert "docker build -f Dockerfile.serve -t digit-recognizer-serve:latest ." in commands
    laptop = make_dry_run(
        project_copy, "images", "TRAIN_IMAGE=cpu", "IMAGE_PREFIX=ghcr.io/me/", "TAG=v1", gpus_listed=True
    )
    assert "--build-arg TENSORFLOW=cpu -t ghcr.io/me/digit-recognizer-train:v1 ." in laptop
    assert "-t ghcr.io/me/digit-recognizer-serve:v1 ." in laptop


def test_the_venvs_tensorflow_and_the_images_are_chosen_apart(project_copy):
    install = make_dry_run(project_copy, "install", "TRAIN_IMAGE=cpu", gpus_listed=True)
    assert (
        "'.[pipeline,tracking,gpu,serve,test]'" in install
    )  # the machine's GPU decides the venv, not the image's setting
    images = make_dry_run(project_copy, "images", "GPU=0", gpus_listed=False)
    assert "--build-arg TENSORFLOW=gpu" in images


def test_a_training_image_of_another_kind_is_refused(project_copy):
    result = subprocess.run(
        ["make", "-s", "images", "TRAIN_IMAGE=rocm"], cwd=project_copy, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert result.stdout.strip() == "error: TRAIN_IMAGE=rocm: expected gpu or cpu"


def test_push_sends_both_images_to_the_prefix(project_copy):
    commands = make_dry_run(project_copy, "push", "IMAGE_PREFIX=registry.example/team/", "TAG=v2", gpus_listed=False)
    builds = commands.index("docker build -f Dockerfile.serve")
    assert commands.index("docker push registry.example/team/digit-recognizer-train:v2") > builds
    assert "docker push registry.example/team/digit-recognizer-serve:v2" in commands


def test_push_without_a_prefix_says_so_before_building(project_copy):
    result = subprocess.run(["make", "-s", "push"], cwd=project_copy, capture_output=True, text=True)
    assert result.returncode != 0
    assert result.stdout.strip().startswith("error: set IMAGE_PREFIX to the registry to push to")
    assert "docker build" not in result.stdout + result.stderr


def test_make_test_lints_and_checks_the_formatting_before_the_tests(project_copy):
    (project_copy / ".venv" / ".installed-cpu").touch()
    commands = make_dry_run(project_copy, "test", "GPU=0", gpus_listed=False).splitlines()
    assert commands == [".venv/bin/ruff check .", ".venv/bin/ruff format --check .", ".venv/bin/python -m pytest"]


def test_make_mlflow_opens_the_ui_over_the_local_store_on_127_0_0_1(project_copy):
    (project_copy / ".venv" / ".installed-cpu").touch()
    commands = make_dry_run(project_copy, "mlflow", "GPU=0", gpus_listed=False)
    assert ".venv/bin/mlflow ui --backend-store-uri sqlite:///runs/mlflow.db --host 127.0.0.1 --port 5000" in commands
    result = subprocess.run(["make", "-s", "mlflow", "GPU=0"], cwd=project_copy, capture_output=True, text=True)
    assert result.returncode != 0
    assert result.stdout.strip() == "error: runs/mlflow.db not found: make run tracks a run there"


def test_the_steps_log_with_mlflows_light_client_and_the_venv_gets_its_store_and_ui():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (skinny,) = [requirement for requirement in extras["pipeline"] if requirement.startswith("mlflow")]
    assert skinny.startswith("mlflow-skinny==") and extras["tracking"] == [f"mlflow=={skinny.partition('==')[2]}"]
    assert not any(requirement.startswith("mlflow") for requirement in extras["serve"])
