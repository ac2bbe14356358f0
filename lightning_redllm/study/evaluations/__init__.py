"""The study's evaluations: each a function ``evaluation(ctx: EvalContext) -> summary`` in its own module.

To add one: write ``<name>.py`` here with the function, register it in ``EVALUATIONS``, give it a
key in ``config.EVAL_KEYS`` and a place in ``plan.plan_stages`` (and a section in ``report.py``).
"""
from __future__ import annotations

from typing import Callable

from .ablations import ablations
from .context import EvalContext, load_checkpoint
from .efficiency import efficiency, quality_flops
from .extrapolation import extrapolation
from .instruct import instruct
from .lm_eval_tasks import lm_eval
from .perplexity import perplexity
from .scaling import scaling
from .zero_shot import zero_shot

#: evaluation name (the ``evaluation`` of a plan's ``evaluate`` stage) -> the function that runs it
EVALUATIONS: dict[str, Callable[[EvalContext], str]] = {
    "perplexity": perplexity, "extrapolation": extrapolation, "efficiency": efficiency, "instruct": instruct,
    "lm_eval": lm_eval, "quality_flops": quality_flops, "scaling": scaling, "zero_shot": zero_shot,
    "ablations": ablations,
}

__all__ = ["EVALUATIONS", "EvalContext", "load_checkpoint"]
