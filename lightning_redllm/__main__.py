"""Entry point: ``python -m lightning_redllm <subcommand> ...``."""
from __future__ import annotations

import sys
from typing import Optional, Sequence

HELP = """usage: python -m lightning_redllm <subcommand> [options]

Train and use RedLLM (encoder-decoder) and DecLLM (decoder-only) models.

Lightning subcommands (recipes via --config, repeatable; dotted overrides; --print_config):
  fit        train (no --config: the quickstart recipe, tiny RedLLM on the bundled corpus)
  validate   run the validation stream once
  test       run the test loop
  predict    score examples (per-example NLL)
Other subcommands:
{extra}
Run `python -m lightning_redllm <subcommand> --help` for the options of each.
"""


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    from .cli.commands import COMMANDS

    if not args or args[0] in ("-h", "--help"):
        extra = "\n".join(f"  {name:<10} {desc}" for name, (_, desc) in COMMANDS.items())
        print(HELP.format(extra=extra))
        return 0
    from .cli.guard import guarded

    if args[0] in COMMANDS:
        return guarded(COMMANDS[args[0]][0])(args[1:])
    from .cli.lightning_cli import LIGHTNING_SUBCOMMANDS, run_lightning

    if args[0] not in LIGHTNING_SUBCOMMANDS:
        print(f"unknown subcommand {args[0]!r}; choose from {', '.join(LIGHTNING_SUBCOMMANDS + tuple(COMMANDS))}",
              file=sys.stderr)
        return 2
    return guarded(run_lightning)(args)


if __name__ == "__main__":
    sys.exit(main())
