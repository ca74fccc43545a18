"""Launching gts jobs on Slurm: batch scripts rendered from launchers/slurm/ for training (torchrun
or srun on every node), Ray clusters running probe fleets, and probe job arrays.
(Local multi-process runs start in :mod:`gts_megatron.runtime.launch`.)"""
