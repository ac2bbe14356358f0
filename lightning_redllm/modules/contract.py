"""The contract of :meth:`LanguageModelModule.objective`: it returns a ``dict`` of tensors with
fixed keys per family. A subclass that returns something else (a tuple, a dict without ``labels``)
gets one line naming its method and the expected keys, not a ``TypeError`` from inside the step."""
from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError


class ObjectiveOutputError(ConfigError, TypeError):
    """``objective()`` broke its contract (a ``ValueError`` too, so the CLI reports it in one line)."""


def check_objective_output(module: Any, inputs: Any, required: tuple[str, ...], optional: tuple[str, ...]) -> None:
    """Raise :class:`ObjectiveOutputError` unless ``inputs`` is a dict holding a tensor under every
    ``required`` key (``optional`` keys may be absent; any other key is passed along untouched)."""
    if isinstance(inputs, dict) and all(isinstance(inputs.get(k), torch.Tensor) for k in required):
        return
    method = f"{type(module).__name__}.objective"
    expected = f"a dict with tensors under {', '.join(map(repr, required))}"
    if optional:
        expected += f" (optional: {', '.join(map(repr, optional))})"
    if not isinstance(inputs, dict):
        got = f"a {type(inputs).__name__}"
        if isinstance(inputs, (tuple, list)):
            got += f" of {len(inputs)}"
    else:
        missing = [k for k in required if k not in inputs]
        wrong = [f"{k!r} is a {type(inputs[k]).__name__}" for k in required
                 if k in inputs and not isinstance(inputs[k], torch.Tensor)]
        got = "a dict " + "; ".join(([f"without {', '.join(map(repr, missing))}"] if missing else []) + wrong)
        got += f" (its keys: {', '.join(map(repr, inputs)) or 'none'})"
    raise ObjectiveOutputError(f"{method} must return {expected}; it returned {got}")


__all__ = ["ObjectiveOutputError", "check_objective_output"]
