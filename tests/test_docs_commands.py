"""Every ``python -m lightning_redllm ...`` (and ``python -m data_pipelines...``) command shown in
README.md and docs/ still parses: Lightning subcommands through ``--print_config`` (the whole
composed config is checked), the others through ``--help`` with every flag they use present in it.
One subprocess runs them all (tests/data/doc_commands.py) from an unrelated folder, as a user would."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PREFIX = re.compile(r"^(?:[A-Z_]+=\S+\s+)*(?:srun\s+|torchrun\s+\S.*?\s+)?python -m ((?:lightning_redllm|data_pipelines)\S*)(.*)$")


def documented_commands() -> list[tuple[str, list[str]]]:
    """(page, words after ``python -m``) of every complete command in fenced blocks and inline code."""
    found = []
    for page in PAGES:
        text = page.read_text()
        fenced = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
        candidates = []
        for block in fenced:
            candidates += re.sub(r"\\\n\s*", " ", block).splitlines()
        outside = re.sub(r"```[a-z]*\n.*?```", "", text, flags=re.S)
        candidates += [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", outside)]
        for line in candidates:
            line = line.strip()
            if "&&" in line:
                line = line.split("&&")[-1].strip()
            m = PREFIX.match(line)
            if not m:
                continue
            try:
                words = shlex.split(m.group(1) + m.group(2), comments=True)
            except ValueError:
                continue
            # placeholders and alternatives are prose, not commands
            if any(w in ("...", "|") or w.startswith("<") or "..." == w[-3:] for w in words):
                continue
            found.append((page.name, words))
    return found


def test_pages_show_commands():
    cmds = documented_commands()
    subcommands = {w[1] for _, w in cmds if w[0] == "lightning_redllm" and len(w) > 1}
    # the front door and the manual between them show the main subcommands
    assert {"fit", "generate", "evaluate", "study", "recipes"} <= subcommands, subcommands
    assert len(cmds) >= 20, len(cmds)


def _reads_a_run_output(words: list[str]) -> bool:
    """``--config runs/.../config.yaml``: a run's saved config, which exists only after that run
    (re-running it is tested through the real entry point in tests/test_cli_user_path.py)."""
    return any(a == "--config" and b.startswith("runs/") for a, b in zip(words, words[1:]))


def test_every_documented_command_parses(tmp_path):
    cmds = [(page, w) for page, w in documented_commands() if not _reads_a_run_output(w)]
    assert len(documented_commands()) - len(cmds) <= 2
    unique = []
    for _, words in cmds:
        if words not in unique:
            unique.append(words)
    (tmp_path / "commands.json").write_text(json.dumps(unique))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "data"), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "data" / "doc_commands.py"), str(tmp_path / "commands.json")],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    results = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(unique), r.stdout[-3000:] + r.stderr[-3000:]
    where = {json.dumps(w): page for page, w in cmds}
    bad = [f"{where[json.dumps(x['command'])]}: python -m {shlex.join(x['command'])}\n  -> rc {x['rc']}: "
           f"{x['tail'][-600:]}" for x in results if x["rc"] != 0]
    assert not bad, "\n".join(bad)
