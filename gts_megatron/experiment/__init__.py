"""Stage "experiment": the paper's comparison at a configured scale (``gts experiment``): dense
continued training, GtS, random groups, one expert per language and plain sparse upcycling,
every arm from the same dense base on the same training tokens, evaluated per language; over several training seeds, with each arm's spread."""
from gts_megatron.experiment.run import run_experiment
from gts_megatron.experiment.seeds import run_seeds

__all__ = ["run_experiment", "run_seeds"]
