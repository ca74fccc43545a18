"""Typed, validated configuration: the one place where config values are checked.

- :mod:`.run`: a run config, YAML with five sections (``model``, ``parallel``, ``train``,
  ``data``, ``moe``); ``gts config show`` prints every field with its default and meaning.
- :mod:`.commands`: the options of the commands that are not training runs (their --flags).
- :mod:`.launch`: the options of `gts launch` (a Slurm job's resources and launcher).
- :mod:`.bench`: the options of `gts bench train`.
- :mod:`.loading`: YAML, model presets and ``--set`` overrides. Unknown keys, wrong types and
  impossible values are refused with a one-line :class:`GtsError` naming the file and field.
"""
from gts_megatron.config.commands import (AdaptConfig, EvalConfig, ExpandConfig, ExperimentConfig, ExportHfConfig,
                                          ImportHfConfig, MechanismConfig, PlanConfig, PrepareConfig, ProbeConfig,
                                          StabilityConfig, SyntheticDataConfig)
from gts_megatron.config.bench import BenchDispatchConfig, BenchLayoutConfig, BenchProbesConfig, BenchTrainConfig
from gts_megatron.config.launch import SlurmJobConfig
from gts_megatron.config.loading import (apply_overrides, build_config, build_options, describe_fields, dump_config,
                                         load_config, model_presets, parse_yaml)
from gts_megatron.config.run import DataConfig, ModelConfig, MoEConfig, ParallelConfig, RunConfig, TrainConfig

__all__ = ["AdaptConfig", "BenchDispatchConfig", "BenchLayoutConfig", "BenchProbesConfig", "BenchTrainConfig", "DataConfig", "EvalConfig", "ExpandConfig", "ExperimentConfig", "ExportHfConfig", "ImportHfConfig", "MechanismConfig", "ModelConfig", "MoEConfig",
           "ParallelConfig", "PlanConfig", "PrepareConfig", "ProbeConfig", "RunConfig", "SlurmJobConfig", "StabilityConfig",
           "SyntheticDataConfig", "TrainConfig", "apply_overrides", "build_config", "build_options", "describe_fields", "dump_config",
           "load_config", "model_presets", "parse_yaml"]
