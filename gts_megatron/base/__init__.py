"""Stage "base": the dense model every later stage starts from (pretrained here from scratch)."""
