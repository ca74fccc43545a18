"""Stage "probe": one short fine-tune per language; per-layer deviations and delta sketches."""
