"""Model definitions on megatron-core (how they are parallelised comes from the runtime)."""
