"""The `gts` commands, one module per kind; gts_megatron/cli/registry.py lists them and imports
the one being run."""
