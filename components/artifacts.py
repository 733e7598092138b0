"""Writing step outputs safely, and the compact array files that steps pass on."""

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path

from common.errors import InputError


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it to `path` only on success.

    A step that fails half-way leaves nothing behind, and never a truncated file
    where a good one stood before.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(handle)
    try:
        yield Path(temporary)
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide outputs from other users (containers)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def save_arrays(path, **arrays):
    """Save named numpy arrays (uncompressed .npz, so uint8 stays 1 byte a pixel)."""
    import numpy as np  # here, not above: `compile --deploy` reads components.deploy where only kfp is installed

    with atomic_path(path) as temporary, open(temporary, "wb") as file:
        np.savez(file, **arrays)


def load_arrays(path, *names):
    """Load the named arrays from a file written by `save_arrays`."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        with np.load(path) as archive:
            missing = [name for name in names if name not in archive]
            if missing:
                raise InputError(f"{path}: has no array named {', '.join(missing)}")
            return tuple(archive[name] for name in names)
    except (OSError, ValueError) as error:
        if isinstance(error, InputError):
            raise
        raise InputError(f"{path}: not an array file written by preprocess ({error})") from None


def save_json(path, value):
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(value, indent=2) + "\n")


def load_json(path, what):
    """Read a JSON file that a step wrote; `what` names it in the error (e.g. "metrics.json from evaluate")."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: file not found ({what})") from None
    except ValueError as error:
        raise InputError(f"{path}: not JSON ({error})") from None


def file_digest(path) -> str:
    """The SHA-256 of a file, in hex (run.json's and the registered model's record of the data)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
