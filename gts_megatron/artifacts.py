"""Writing a stage's artifacts so that a crash never leaves a half-written one behind."""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from pathlib import Path
from typing import Iterator

from gts_megatron.errors import GtsError


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename (never half-written)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


@contextlib.contextmanager
def staged_directory(target: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``target``; on success it replaces ``target``.

    On any exception (or Ctrl-C) the temporary directory is removed and ``target`` is untouched.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def claim_directory(out: Path, inputs: dict, what: str) -> None:
    """Make ``out`` the home of work on ``inputs`` (recorded in ``out/inputs.json``), or refuse it
    when it holds work on other inputs: resuming from those would mix two experiments."""
    import json

    record = out / "inputs.json"
    if record.is_file():
        held = json.loads(record.read_text())
        if held != inputs:
            changed = sorted(k for k in set(held) | set(inputs) if held.get(k) != inputs.get(k))
            raise GtsError(f"{out} holds {what} with other inputs ({', '.join(changed)} differ); use another "
                           f"output directory, or remove it to start over")
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(record, json.dumps(inputs, indent=1, sort_keys=True) + "\n")
