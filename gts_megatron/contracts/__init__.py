"""Typed objects that cross stage boundaries: the plan (:mod:`.plan`), checkpoint metadata
(:mod:`.checkpoint`), a trained checkpoint opened for use (:mod:`.trained`), a run's preflight
checks (:mod:`.preflight`) and how a GtS model's training stages follow one another (:mod:`.training`).
Stages and the model import them; they import no stage, so a later stage never reaches sideways
into an earlier one."""
