"""Stage "plan": language similarity -> groups -> MoE layers -> plan.json."""
