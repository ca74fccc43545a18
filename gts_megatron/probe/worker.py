"""One process of a probe split over pipeline stages: ``python -m gts_megatron.probe.worker
OPTIONS.json LANGUAGE STORE WORK_DIR``, started ``pipeline`` times by :func:`gts_megatron.probe.run.run_probe`
through torch elastic. Each process trains its stage's layers and summarises them; rank 0 writes
the result. A refusal is handed back to the launcher as one line."""
from __future__ import annotations

import sys
from pathlib import Path

from gts_megatron.config import ProbeConfig
from gts_megatron.errors import GtsError
from gts_megatron.probe.run import probe_here
from gts_megatron.runtime.launch import report_worker_error


def main(argv: list[str]) -> int:
    """Run this rank's share of one probe; 2 on a refusal."""
    options, language, store, work_dir = argv
    try:
        probe_here(ProbeConfig.model_validate_json(Path(options).read_text()), language, Path(store), Path(work_dir))
    except GtsError as exc:
        if not report_worker_error(str(exc)):
            print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
