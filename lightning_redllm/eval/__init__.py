"""Evaluation: held-out perplexity per source and across lengths, length extrapolation, inference
efficiency, scaling fits and plots. The submodules beyond ``perplexity`` are imported on first use."""
from .perplexity import evaluate_perplexity, format_table, iter_documents, score_continuations, score_sequences

__all__ = ["evaluate_perplexity", "format_table", "iter_documents", "score_sequences", "score_continuations",
           "extrapolation_sweep", "efficiency_benchmark", "fit_power_law", "scaling_fits"]

_LAZY = {"extrapolation_sweep": "extrapolation", "efficiency_benchmark": "efficiency", "fit_power_law": "scaling",
         "scaling_fits": "scaling"}
# the lm-evaluation-harness adapter: needs the eval extra (a one-line ImportError says so otherwise)
_LAZY.update({name: "lm_eval_adapter" for name in ("run_lm_eval", "BUNDLED_TASKS", "BUNDLED_TASKS_DIR",
                                                    "LightningRedLLMLM")})


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
