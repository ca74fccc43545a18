"""Token datasets and the deterministic, resumable order in which training reads them."""
