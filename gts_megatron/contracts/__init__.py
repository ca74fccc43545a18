"""Typed objects that cross stage boundaries (the plan today). Stages and the model import them;
they import no stage, so a later stage never reaches sideways into an earlier one."""
