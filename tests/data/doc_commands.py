"""Check, in ONE process, that documented commands still parse (tests/test_docs_commands.py).

    python doc_commands.py COMMANDS.json   ->  one JSON line per command on stdout

Each command is a list of words after ``python -m`` (module first). Lightning subcommands (fit,
validate, test, predict) run with ``--print_config`` appended: jsonargparse parses and checks the
whole composed config (recipes, every flag, types) and prints it without running anything. Every
other command runs with ``--help`` appended, and each ``--flag`` the command uses must appear in that
help text (``--help`` alone would not notice a flag that no longer exists).
"""
from __future__ import annotations

import contextlib
import io
import json
import re
import runpy
import sys

LIGHTNING = ("fit", "validate", "test", "predict")


def run(words: list[str]) -> tuple[int, str]:
    module, args = words[0], words[1:]
    if module == "lightning_redllm":
        from lightning_redllm.__main__ import main

        call = lambda argv: main(argv)  # noqa: E731
    else:
        def call(argv):
            sys.argv = [module, *argv]
            runpy.run_module(module, run_name="__main__", alter_sys=True)
            return 0
    lightning = module == "lightning_redllm" and args[:1] and args[0] in LIGHTNING
    argv = [*args, "--print_config"] if lightning else [*args, "--help"]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            rc = call(argv)
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except Exception as e:  # noqa: BLE001 - reported, not raised: the next command still runs
        return 1, out.getvalue() + f"\n{type(e).__name__}: {e}"
    text = out.getvalue()
    if rc == 0 and not lightning:
        unknown = [f for f in re.findall(r"(?<![\w-])(--[A-Za-z][\w.-]*)", " ".join(args))
                   if f not in text and f.split(".")[0] not in text]
        if unknown:
            return 1, f"flags not in --help: {unknown}\n{text[-1500:]}"
    return int(rc or 0), text


def main() -> None:
    commands = json.loads(open(sys.argv[1]).read())
    real_stdout = sys.stdout
    for words in commands:
        rc, text = run(words)
        real_stdout.write(json.dumps({"command": words, "rc": rc, "tail": text[-1500:]}) + "\n")
        real_stdout.flush()


if __name__ == "__main__":
    main()
