"""``python -m lightning_redllm.lm_eval ...``: lm-eval's command line with the ``lightning_redllm`` model
registered and the bundled tasks included. The public entry point stays at this path; the code is in
:mod:`lightning_redllm.cli.lm_eval` (the command layer)."""
from __future__ import annotations

import sys

from .cli.lm_eval import evaluate_tasks, main

__all__ = ["evaluate_tasks", "main"]

if __name__ == "__main__":
    sys.exit(main())
