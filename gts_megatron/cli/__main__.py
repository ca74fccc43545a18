"""``python -m gts_megatron.cli``: the `gts` command (how launchers start workers)."""
import sys

from gts_megatron.cli import main

sys.exit(main())
