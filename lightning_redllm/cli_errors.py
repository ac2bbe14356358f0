"""Configuration errors of the CLI as one line naming the file (and line) or flag, the key and the
value, plus a hint — instead of jsonargparse's 50-line usage dump.

:func:`check_config_files` reads every ``--config`` file before the parser does (empty file, YAML
syntax error with its line, a top level that is not a mapping); :func:`explain_parser_error` turns
the parser's nested report ("Does not validate against any of the Union subtypes ...") into
``<file>:<line>: model.init_args.lrr: not an option of RedLLMModule``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import yaml

from .errors import ConfigError

HELP_HINT = "`python -m lightning_redllm {sub} --help` lists every option; `--print_config` shows the composed config"


def config_files(args: Sequence[str]) -> list[str]:
    files, i = [], 0
    while i < len(args):
        if args[i] == "--config" and i + 1 < len(args):
            files.append(args[i + 1])
            i += 2
            continue
        if args[i].startswith("--config="):
            files.append(args[i][len("--config="):])
        i += 1
    return [f for f in files if Path(f).is_file()]


def check_config_files(args: Sequence[str]) -> None:
    """Refuse an empty, unparsable or non-mapping YAML file, naming it (and the line)."""
    sub = args[0] if args else "fit"
    for name in config_files(args):
        text = Path(name).read_text()
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            # the context mark is where the broken construct starts; the problem mark where it broke
            mark = getattr(err, "context_mark", None) or getattr(err, "problem_mark", None)
            where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark else name
            problem = ", ".join(x for x in (getattr(err, "context", None), getattr(err, "problem", None)) if x)
            problem = problem or str(err).splitlines()[0]
            raise ConfigError(f"{where}: YAML syntax error: {problem}", HELP_HINT.format(sub=sub)) from None
        if data is None:
            raise ConfigError(f"config file {name} is empty (no keys)",
                              "a recipe holds model:/data:/trainer: sections; see `python -m lightning_redllm recipes`")
        if not isinstance(data, dict):
            raise ConfigError(f"config file {name} must hold a mapping (model:, data:, trainer:, ...), "
                              f"got a {type(data).__name__}", HELP_HINT.format(sub=sub))


_NOISE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:", "Given value type:",
          "Given value:", "Expected a <class 'NoneType'>")


def _where(key_path: str, leaf: str, args: Sequence[str]) -> str:
    """The flag or ``file:line`` that set ``leaf`` (last one wins, as in the parser)."""
    for a in reversed(args):
        flag = a.split("=", 1)[0]
        if flag.startswith("--") and flag.lstrip("-").split(".")[-1] == leaf:
            return f"flag {flag}"
    for name in reversed(config_files(args)):
        for n, line in enumerate(Path(name).read_text().splitlines(), 1):
            if re.match(rf"\s*{re.escape(leaf)}\s*:", line) or re.search(rf"[{{,]\s*{re.escape(leaf)}\s*:", line):
                return f"{name}:{n}"
    return "the composed config"


def explain_parser_error(message: str, args: Sequence[str]) -> ConfigError:
    sub = args[0] if args else "fit"
    hint = HELP_HINT.format(sub=sub)
    text = message.strip()
    if text.startswith("unrecognized arguments:"):
        return ConfigError(f"{text} (no such option)", hint)
    keys = re.findall(r'Parser key "([^"]+)"', text)
    cls = re.search(r"Problem with given class_path '([^']+)'", text)
    cls_name = cls.group(1).rsplit(".", 1)[-1] if cls else None
    path = keys[0] if keys else ""
    if cls and len(keys) > 1:
        path = f"{keys[0]}.init_args.{'.'.join(keys[1:])}"
    elif len(keys) > 1:
        path = ".".join(keys)
    bad_option = re.search(r"Option '([^']+)' is not accepted", text)
    if bad_option:
        leaf = bad_option.group(1)
        full = f"{path}.init_args.{leaf}" if cls else f"{path}.{leaf}"
        where = _where(full, leaf, args)
        subject = where[len("flag "):] if where.startswith("flag ") else f"{where}: {full}"
        return ConfigError(f"{subject}: not an option of {cls_name or path}", hint)
    wrong_type = re.search(r"Expected a <class '([^']+)'>\. Got value: (.*)", text)
    if wrong_type and keys:
        where = _where(path, keys[-1], args)
        subject = where[len("flag "):] if where.startswith("flag ") else f"{where}: {path}"
        return ConfigError(f"{subject}: expected {wrong_type.group(1)}, got {wrong_type.group(2).strip()!r}", hint)
    if "Unexpected config" in text:
        return ConfigError(f"a --config value is not a config: {text}", hint)
    # anything else: the informative lines, joined
    lines = [ln.strip().removeprefix("- ") for ln in text.splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(_NOISE)]
    lead = f"{path}: " if path else ""
    body = "; ".join(ln for ln in lines if not ln.startswith("Parser key")) or text
    return ConfigError(f"{lead}{body}", hint)
