"""Parallel runtime: process groups, megatron parallel state, the CPU compatibility layer."""
