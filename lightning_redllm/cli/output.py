"""How a command reports a result: its table on stdout and, with ``--out FILE``, the result as JSON."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional


def print_and_save(table: str, result: dict[str, Any], out: Optional[str]) -> None:
    """Print ``table``; with ``out``, also write ``result`` there as JSON (parent folders made) and say so."""
    print(table)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2))
        print(f"wrote {out}")


__all__ = ["print_and_save"]
