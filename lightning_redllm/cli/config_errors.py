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

from ..errors import ConfigError

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


def _key_path(dotted: str) -> tuple[str, ...]:
    """``model.init_args.lr`` and ``model.lr`` (jsonargparse accepts both) name the same key."""
    return tuple(part for part in dotted.split(".") if part and part != "init_args")


def yaml_key_line(name: str, key_path: str) -> int | None:
    """1-based line of ``key_path`` (dotted; ``init_args`` levels optional) in the YAML file ``name``."""
    try:
        node = yaml.compose(Path(name).read_text())
    except (OSError, yaml.YAMLError):
        return None
    line = None
    for part in _key_path(key_path):
        while True:
            if not isinstance(node, yaml.MappingNode):
                return None
            found = {k.value: (k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode)}
            if part in found:
                key, node = found[part]
                line = key.start_mark.line + 1
                break
            if "init_args" not in found:  # a class's options may sit under init_args or beside class_path
                return None
            node = found["init_args"][1]
    return line


def where_set(key_path: str, args: Sequence[str]) -> str:
    """Where ``key_path`` got its value, as the parser applies them (the last one wins): ``flag --a.b``
    or ``file:line`` of the last ``--config`` file that sets it; else ``the composed config``."""
    target = _key_path(key_path)
    for a in reversed(args):
        flag = a.split("=", 1)[0]
        if flag.startswith("--") and _key_path(flag[2:]) == target:
            return f"flag {flag}"
    for name in reversed(config_files(args)):
        line = yaml_key_line(name, key_path)
        if line is not None:
            return f"{name}:{line}"
    return "the composed config"


def _subject(where: str, key_path: str) -> str:
    """``--flag`` alone (it names the key), or ``file:line: key``."""
    return where[len("flag "):] if where.startswith("flag ") else f"{where}: {key_path}"


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
        return ConfigError(f"{_subject(where_set(full, args), full)}: not an option of {cls_name or path}", hint)
    wrong_type = re.search(r"Expected a <class '([^']+)'>\. Got value: (.*)", text)
    if wrong_type and keys:
        subject = _subject(where_set(path, args), path)
        return ConfigError(f"{subject}: expected {wrong_type.group(1)}, got {wrong_type.group(2).strip()!r}", hint)
    choice = re.search(r"Expected a (?:typing\.)?Literal\[(.*)\]\. Got value: (.*)", text)
    if choice and keys:
        subject = _subject(where_set(path, args), path)
        return ConfigError(f"{subject}: expected one of {choice.group(1)}, got {choice.group(2).strip()!r}", hint)
    if "Unexpected config" in text:
        return ConfigError(f"a --config value is not a config: {text}", hint)
    # anything else: the informative lines, joined
    lines = [ln.strip().removeprefix("- ") for ln in text.splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(_NOISE) and not ln.startswith("Problem with given class_path")]
    given = re.search(r"Given value: (.*)", text)
    if given and "NestedArg" not in given.group(1):
        lines.append(f"got {given.group(1).strip()!r}")
    lead = f"{_subject(where_set(path, args), path)}: " if path else ""
    body = "; ".join(ln for ln in lines if not ln.startswith("Parser key")) or text
    return ConfigError(f"{lead}{body}", hint)
