"""Entry point of the `gts` command: parse through the registry, run, turn errors into one line
and an exit code."""
from __future__ import annotations

import sys
import warnings

from gts_megatron.cli.registry import parse, run
from gts_megatron.errors import GtsError, Interrupted, WorkersFailed

# megatron-core announces every missing optional accelerator library; they are optional here
# and torch's checkpoint code warns about its own APIs that megatron-core 0.16.1 calls
for _pattern in (r".*Apex is not installed.*", r".*Transformer Engine and Apex are not installed.*",
                 r".*full scope is deprecated.*", r".*`load_state_dict` is deprecated.*",
                 r".*Please use DTensor instead.*", r".*`save_state_dict` is deprecated.*",
                 r".*all_gather_into_tensor. is deprecated.*"):
    warnings.filterwarnings("ignore", message=_pattern)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `gts` console command."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    try:
        return run(args)
    except GtsError as exc:
        from gts_megatron.runtime.launch import report_worker_error

        if not report_worker_error(str(exc)):
            print(f"error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(str(exc), file=sys.stderr)
        return 128 + exc.signum
    except WorkersFailed as exc:
        return exc.code
    except OSError as exc:  # the machine refused (read-only or full disk, a file where a folder must be)
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
