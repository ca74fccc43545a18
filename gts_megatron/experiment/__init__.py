"""Stage "experiment": the paper's comparison at a configured scale (``gts experiment``): dense
continued training, GtS, random groups, one expert per language and plain sparse upcycling,
every arm from the same dense base on the same training tokens, evaluated per language."""
from gts_megatron.experiment.run import run_experiment

__all__ = ["run_experiment"]
