"""Scratch folders: what a killed process leaves in the temporary directory is removed by the
next one, and a running process's folder is not."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

from gts_megatron.artifacts import scratch_directory

KILLED_INSIDE = """
import os, signal, sys
from pathlib import Path
from gts_megatron.artifacts import scratch_directory
with scratch_directory("probe", Path(sys.argv[1])) as tmp:
    (tmp / "config.yaml").write_text("half")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_scratch_folder_left_by_kill_9_is_removed_by_the_next_one(tmp_path):
    proc = subprocess.run([sys.executable, "-c", KILLED_INSIDE, str(tmp_path)])
    assert proc.returncode == -signal.SIGKILL
    left = list(tmp_path.iterdir())
    assert len(left) == 1 and (left[0] / "config.yaml").is_file()  # what a kill leaves
    with scratch_directory("probe", tmp_path) as tmp:
        assert list(tmp_path.iterdir()) == [tmp]
        assert tmp.name.startswith(f"gts-probe-{socket.gethostname()}-{os.getpid()}-")
    assert list(tmp_path.iterdir()) == []


def test_a_running_process_keeps_its_scratch_folder_and_other_kinds_are_left_alone(tmp_path):
    host = socket.gethostname()
    live = tmp_path / f"gts-probe-{host}-{os.getpid()}-abc"  # this process runs
    other_host = tmp_path / "gts-probe-elsewhere-1-abc"  # pids of another host mean nothing here
    other_kind = tmp_path / f"gts-launch-{host}-999999999-abc"
    for folder in (live, other_host, other_kind):
        folder.mkdir()
    with scratch_directory("probe", tmp_path):
        pass
    assert sorted(tmp_path.iterdir()) == sorted([live, other_host, other_kind])


def test_checksums_on_several_threads_are_each_files_own_in_order(tmp_path):
    from gts_megatron.artifacts import file_sha256, files_sha256

    paths = []
    for i in range(7):  # sizes on both sides of the 1 MiB read chunk
        paths.append(tmp_path / f"shard{i}")
        paths[-1].write_bytes(os.urandom(i * 300_000))
    assert files_sha256(paths) == [file_sha256(p) for p in paths]
    assert len(set(files_sha256(paths))) == len(paths)
