"""Writing a stage's artifacts so that a crash never leaves a half-written one behind."""
from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional

from gts_megatron.errors import GtsError


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Remove what writers of ``target`` killed before their rename left beside it
    (``.<name>.tmp-<pid>`` and ``.<name>.old-<pid>``) when that pid is no longer running;
    returns what was removed. A live writer's files are left alone."""
    import psutil

    removed = []
    for debris in target.parent.glob(f".{target.name}.*-*") if target.parent.is_dir() else ():
        kind, _, pid = debris.name[len(target.name) + 2:].rpartition("-")
        if kind not in ("tmp", "old") or not pid.isdigit() or psutil.pid_exists(int(pid)):
            continue
        if debris.is_dir() and not debris.is_symlink():
            shutil.rmtree(debris, ignore_errors=True)
        else:
            debris.unlink(missing_ok=True)
        removed.append(debris)
    return removed


@contextlib.contextmanager
def scratch_directory(kind: str, parent: Optional[Path] = None) -> Iterator[Path]:
    """A private folder for the life of the block, in ``parent`` (default: the system's temporary
    directory), named ``gts-<kind>-<host>-<pid>-<random>`` and removed at the end. Those that
    processes of this host left behind when they were killed (their pid no longer runs) are
    removed first, so a kill -9 leaves nothing past the next run."""
    import psutil

    root = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    prefix = f"gts-{kind}-{socket.gethostname()}-"
    for debris in root.glob(prefix + "*"):
        pid = debris.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not psutil.pid_exists(int(pid)) and debris.is_dir() and not debris.is_symlink():
            shutil.rmtree(debris, ignore_errors=True)
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename (never half-written)."""
    remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


@contextlib.contextmanager
def staged_directory(target: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``target``; on success it replaces ``target``.

    On any exception (or Ctrl-C) the temporary directory is removed and ``target`` is untouched.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)  # a writer killed with -9 could not clean up after itself
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


def _refuse_duplicate_keys(pairs: list) -> dict:
    keys = [key for key, _ in pairs]
    twice = sorted({key for key in keys if keys.count(key) > 1})
    if twice:
        raise ValueError(f"key {twice[0][:80]!r} is given twice in one object")
    return dict(pairs)


def read_json(path: Path) -> Any:
    """A JSON file, strictly: UTF-8, and no key given twice in one object (plain json keeps the
    last one silently). A one-line GtsError naming the file otherwise."""
    data = Path(path).read_bytes()
    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=_refuse_duplicate_keys)
    except UnicodeDecodeError as exc:
        raise GtsError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise GtsError(f"{path}: not valid JSON ({str(exc)[:200]})") from None


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def files_sha256(paths: list[Path]) -> list[str]:
    """:func:`file_sha256` of each path, in order, on several threads (hashlib and file reads
    release the GIL, so a checkpoint's shards hash in parallel on as many cores as there are)."""
    workers = min(len(paths), os.cpu_count() or 1, 16)
    if workers <= 1:
        return [file_sha256(p) for p in paths]
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(file_sha256, paths))


def claim_directory(out: Path, inputs: dict, what: str) -> None:
    """Make ``out`` the home of work on ``inputs`` (recorded in ``out/inputs.json``), or refuse it
    when it holds work on other inputs: resuming from those would mix two experiments."""
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
