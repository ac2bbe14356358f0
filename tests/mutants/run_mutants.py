"""Mutation check: do the model tests catch broken architecture pieces?

For each mutation below, the script copies the repository's ``lightning_redllm/`` package (and
``tests/`` plus ``pyproject.toml``) into a fresh scratch directory, applies textual find/replace
edits to one source file (each ``find`` must occur exactly once, so a mutation cannot silently rot
when the library changes), and runs

    python -m pytest -q [-x] -p no:cacheprovider <test files>

in that directory. The scratch copy shadows the editable install: pytest runs with the scratch
directory as cwd (``python -m`` puts it first on ``sys.path``) and first on ``PYTHONPATH``, and a
tiny plugin loaded into the pytest process refuses to run (usage error) unless
``lightning_redllm.__file__`` lies inside the scratch directory, so a run can never silently
test the unmutated package.

A mutation is *killed* when some test fails (or errors, or the run times out). Tests that already
fail on the unmutated copy (the baseline run) are deselected from the mutant runs and reported.

Usage (from anywhere; takes a few minutes on 2 cores):

    python tests/mutants/run_mutants.py [--out mutants.json] [--only 1,4,10a] [--all-failures] [--check]

``--all-failures`` drops ``-x`` so every killing test is listed (slower). Prints a markdown table
and writes the results as JSON. Exit status 1 if any mutation survives, 2 on a setup problem.

Not collected by pytest (no ``test_`` prefix).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "lightning_redllm"
DEFAULT_TESTS = ["tests/test_reference_models.py", "tests/test_models.py", "tests/test_loss_generate_flops.py"]


@dataclass
class Mutation:
    id: str
    name: str
    file: str                                   # relative to the package directory
    edits: list[tuple[str, str]] = field(default_factory=list)  # (find, replace), each find exactly once


MUTATIONS: list[Mutation] = [
    Mutation("1", "Q RMSNorm deleted", "nn/attention.py", [
        ("            q = rms_norm(q, self.eps)\n", "            q = q\n")]),
    Mutation("2", "K RMSNorm deleted", "nn/attention.py", [
        ("k, v = rms_norm(k, self.eps), rms_norm(v, self.eps)", "k, v = k, rms_norm(v, self.eps)")]),
    Mutation("3", "V RMSNorm deleted", "nn/attention.py", [
        ("k, v = rms_norm(k, self.eps), rms_norm(v, self.eps)", "k, v = rms_norm(k, self.eps), v")]),
    Mutation("4", "attention-output RMSNorm deleted", "nn/attention.py", [
        ("            out = rms_norm(out, self.eps)\n", "            out = out\n")]),
    Mutation("5", "RedLLM default attn_out_norm off", "config.py", [
        ('self.attn_out_norm = self.family == "redllm"', "self.attn_out_norm = False")]),
    Mutation("6", "cross-attention keys unrotated", "nn/attention.py", [
        ("return apply_rope(k, kv_cos, kv_sin), v",
         "return (k if self.is_cross else apply_rope(k, kv_cos, kv_sin)), v")]),
    Mutation("7", "cross-attention queries at positions 0.. (not decoder positions)", "models/redllm.py", [
        ("cross_inputs = AttentionInputs(cos=cos, sin=sin, kv_cos=enc_cos,",
         "cross_inputs = AttentionInputs(*self.rope_tables(torch.arange(past, past + t, device=device)"
         ".expand(b, t), max_position=past + t - 1), kv_cos=enc_cos,")]),
    Mutation("8", "decoder positions start at 0 instead of k", "models/redllm.py", [
        ("dec_pos = k.view(b, 1) + offsets.view(1, t)", "dec_pos = 0 * k.view(b, 1) + offsets.view(1, t)")]),
    Mutation("9", "k = padded encoder length for every example", "models/redllm.py", [
        ("k = lengths if lengths is not None else torch.full((b,), s, device=device, dtype=torch.long)",
         "k = torch.full((b,), s, device=device, dtype=torch.long)")]),
    Mutation("10a", "untied: separate decoder input embedding (RedLLM)", "models/redllm.py", [
        ("        self.decoder_norm = RMSNorm(config.d_model, config.norm_eps)\n",
         "        self.decoder_norm = RMSNorm(config.d_model, config.norm_eps)\n"
         "        self.decoder_embed = nn.Embedding(config.vocab_size, config.d_model)\n"),
        ("x = self.embed(decoder_input_ids)", "x = self.decoder_embed(decoder_input_ids)")]),
    Mutation("10b", "untied: separate encoder input embedding (RedLLM)", "models/redllm.py", [
        ("        self.encoder_norm = RMSNorm(config.d_model, config.norm_eps)\n",
         "        self.encoder_norm = RMSNorm(config.d_model, config.norm_eps)\n"
         "        self.encoder_embed = nn.Embedding(config.vocab_size, config.d_model)\n"),
        ("x = self.embed(encoder_input_ids)", "x = self.encoder_embed(encoder_input_ids)")]),
    Mutation("10c", "untied: separate output projection (lm_head, both families)", "models/base.py", [
        ("        self.embed = nn.Embedding(config.vocab_size, config.d_model)\n",
         "        self.embed = nn.Embedding(config.vocab_size, config.d_model)\n"
         "        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)\n"),
        ("return hidden @ self.embed.weight.t()", "return hidden @ self.lm_head.weight.t()"),
        ("res = loss_fn(hidden, self.embed.weight,", "res = loss_fn(hidden, self.lm_head.weight,")]),
    Mutation("11", "encoder padding mask dropped", "models/redllm.py", [
        ("mask = build_mask(padding(encoder_lengths), b, s, s, device)", "mask = None")]),
    Mutation("12", "cross-attention padding mask dropped", "models/redllm.py", [
        ("cross_mask = build_mask(padding(lengths), b, t, s, device) if lengths is not None else None",
         "cross_mask = None")]),
    Mutation("13", "encoder made causal", "models/redllm.py", [
        ("mask = build_mask(padding(encoder_lengths), b, s, s, device)",
         "mask = build_mask(lambda bb, qq, kk: padding(encoder_lengths)(bb, qq, kk) & causal(bb, qq, kk), b, s, s, device)"),
        ("inputs = AttentionInputs(cos=cos, sin=sin, mask=mask, is_causal=False)",
         "inputs = AttentionInputs(cos=cos, sin=sin, mask=mask, is_causal=True)")]),
    Mutation("14", "z-loss term dropped from the loss value", "nn/loss.py", [
        ("loss = (nll_sum + z_loss * z_sum) / denom", "loss = nll_sum / denom")]),
    Mutation("15", "RoPE rotate-half sign flipped", "nn/rope.py", [
        ("out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)",
         "out = torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)")]),
    # ---- extras beyond the brief
    Mutation("16", "DecLLM prefix (BiAttn) mask dropped", "models/decllm.py", [
        ("fn = or_masks(fn, prefix(prefix_lengths.to(device)))", "fn = fn")]),
    Mutation("17", "GQA: kv heads tiled (repeat) instead of grouped", "nn/attention.py", [
        ("        out = F.scaled_dot_product_attention(\n",
         "        if self.n_heads != self.n_kv_heads:\n"
         "            r = self.n_heads // self.n_kv_heads\n"
         "            k, v = k.repeat(1, r, 1, 1), v.repeat(1, r, 1, 1)\n"
         "        out = F.scaled_dot_product_attention(\n")]),
    Mutation("18", "RoPE interleaved pairs instead of rotate-half", "nn/rope.py", [
        ("x1, x2 = xf[..., :half], xf[..., half:]", "x1, x2 = xf[..., 0::2], xf[..., 1::2]")]),
    Mutation("19", "attention scale 1 instead of 1/sqrt(head_dim)", "nn/attention.py", [
        ("            dropout_p=self.dropout if self.training else 0.0,\n",
         "            dropout_p=self.dropout if self.training else 0.0, scale=1.0,\n")]),
    Mutation("20", "cross-attention pre-norm skipped", "nn/block.py", [
        ("self.cross_attn(self.cross_norm(x),", "self.cross_attn(x,")]),
    Mutation("21", "decoder output through encoder_norm", "models/redllm.py", [
        ("x = self.decoder_norm(x)", "x = self.encoder_norm(x)")]),
    Mutation("22", "encoder output not final-normed", "models/redllm.py", [
        ("return EncoderOutput(self.encoder_norm(x), encoder_lengths)", "return EncoderOutput(x, encoder_lengths)")]),
    Mutation("23", "SwiGLU gate and up swapped", "nn/mlp.py", [
        ("F.silu(self.gate_proj(x)) * self.up_proj(x)", "F.silu(self.up_proj(x)) * self.gate_proj(x)")]),
]

GUARD_PLUGIN = '''\
"""Loaded with -p: fail fast unless lightning_redllm is imported from the scratch copy."""
import os

import pytest

import lightning_redllm

ORIGIN = os.path.realpath(lightning_redllm.__file__)


def pytest_configure(config):
    root = os.path.realpath(os.environ["MUTANT_SCRATCH_ROOT"]) + os.sep
    with open(os.environ["MUTANT_ORIGIN_FILE"], "w") as fh:
        fh.write(ORIGIN)
    if not ORIGIN.startswith(root):
        raise pytest.UsageError(f"lightning_redllm imported from {ORIGIN}, not from the scratch copy {root}")


def pytest_report_header(config):
    return f"lightning_redllm imported from {ORIGIN}"
'''


def _ignore(_dir, names):
    return [n for n in names if n in ("__pycache__", ".pytest_cache") or n.endswith(".pyc")]


def prepare(scratch: Path, mutation: Mutation | None) -> list[str]:
    """Copy package, tests and pyproject into ``scratch`` and apply ``mutation``."""
    shutil.copytree(REPO / PACKAGE, scratch / PACKAGE, ignore=_ignore)
    shutil.copytree(REPO / "tests", scratch / "tests", ignore=_ignore)
    shutil.copy2(REPO / "pyproject.toml", scratch / "pyproject.toml")
    (scratch / "_mutant_guard.py").write_text(GUARD_PLUGIN)
    if mutation is None:
        return []
    path = scratch / PACKAGE / mutation.file
    text = path.read_text()
    for find, replace in mutation.edits:
        n = text.count(find)
        if n != 1:
            raise RuntimeError(f"mutation {mutation.id} ({mutation.name}): {find!r} occurs {n} times in "
                               f"{PACKAGE}/{mutation.file}, expected exactly once -- update the mutation")
        text = text.replace(find, replace)
    path.write_text(text)
    return [f"{PACKAGE}/{mutation.file}"]


def run_pytest(scratch: Path, tests: list[str], stop_first: bool, deselect: list[str], timeout: float) -> dict:
    junit = scratch / "junit.xml"
    origin_file = scratch / "origin.txt"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "_mutant_guard",
           f"--junitxml={junit}", "-o", "junit_family=xunit2"]
    if stop_first:
        cmd.append("-x")
    for nodeid in deselect:
        cmd += ["--deselect", nodeid]
    cmd += tests
    env = dict(os.environ)
    env["PYTHONPATH"] = str(scratch) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["MUTANT_SCRATCH_ROOT"] = str(scratch)
    env["MUTANT_ORIGIN_FILE"] = str(origin_file)
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, cwd=scratch, env=env, capture_output=True, text=True, timeout=timeout)
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc = None
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
    seconds = time.time() - t0
    origin = origin_file.read_text() if origin_file.exists() else None
    failed, passed = [], 0
    if junit.exists():
        for case in ET.parse(junit).iter("testcase"):
            cls, name = case.get("classname", ""), case.get("name", "")
            nodeid = cls.replace(".", "/") + ".py::" + name if cls else name
            if case.find("failure") is not None or case.find("error") is not None:
                failed.append(nodeid)
            elif case.find("skipped") is None:
                passed += 1
    return dict(rc=rc, seconds=round(seconds, 1), failed=failed, passed=passed, origin=origin,
                output_tail=out[-3000:])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="mutants.json", help="JSON results path (default: ./mutants.json)")
    ap.add_argument("--only", default="", help="comma-separated mutation ids to run (default: all)")
    ap.add_argument("--tests", nargs="+", default=DEFAULT_TESTS, help="test files, relative to the repo root")
    ap.add_argument("--all-failures", action="store_true", help="no -x: list every test that kills a mutant")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per pytest run")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directories")
    ap.add_argument("--check", action="store_true", help="only check that every mutation still applies")
    args = ap.parse_args(argv)

    selected = MUTATIONS
    if args.only:
        wanted = {s.strip() for s in args.only.split(",") if s.strip()}
        unknown = wanted - {m.id for m in MUTATIONS}
        if unknown:
            print(f"unknown mutation id(s): {sorted(unknown)}", file=sys.stderr)
            return 2
        selected = [m for m in MUTATIONS if m.id in wanted]

    # every mutation must apply before anything runs (a stale find string is a setup error)
    text_cache: dict[str, str] = {}
    for m in selected:
        text = text_cache.setdefault(m.file, (REPO / PACKAGE / m.file).read_text())
        for find, _ in m.edits:
            if text.count(find) != 1:
                print(f"mutation {m.id} ({m.name}): find string occurs {text.count(find)} times in "
                      f"{PACKAGE}/{m.file}: {find!r}", file=sys.stderr)
                return 2
    if args.check:
        print(f"all {len(selected)} mutations apply (each find string occurs exactly once)")
        return 0

    root = Path(tempfile.mkdtemp(prefix="redllm-mutants-"))
    results = []
    try:
        base_dir = root / "baseline"
        base_dir.mkdir()
        prepare(base_dir, None)
        print(f"baseline (unmutated copy): {' '.join(args.tests)}", flush=True)
        base = run_pytest(base_dir, args.tests, stop_first=False, deselect=[], timeout=args.timeout)
        if base["rc"] not in (0, 1) or not base["origin"] or not base["origin"].startswith(str(base_dir)):
            print("baseline run did not execute the scratch copy cleanly:\n" + base["output_tail"], file=sys.stderr)
            return 2
        print(f"  imported from {base['origin']}; {base['passed']} passed, {len(base['failed'])} failed "
              f"({base['seconds']} s)", flush=True)
        if base["failed"]:
            print("  baseline failures (deselected from the mutant runs): " + ", ".join(base["failed"]), flush=True)
        if any("test_reference_models" in f for f in base["failed"]):
            print("the reference tests fail on the unmutated code; fix that first", file=sys.stderr)
            return 2

        for m in selected:
            scratch = root / f"m{m.id}"
            scratch.mkdir()
            prepare(scratch, m)
            res = run_pytest(scratch, args.tests, stop_first=not args.all_failures,
                             deselect=base["failed"], timeout=args.timeout)
            if res["origin"] is None or not res["origin"].startswith(str(scratch)):
                print(f"mutation {m.id}: pytest did not import the scratch copy:\n{res['output_tail']}", file=sys.stderr)
                return 2
            if res["rc"] is None:
                status = "killed (timeout)"
            elif res["failed"]:
                status = "killed"
            elif res["rc"] == 0:
                status = "SURVIVED"
            else:  # non-zero exit without a failing test case: collection/usage error
                status = f"killed (pytest exit {res['rc']}, no test case)"
            row = dict(id=m.id, mutation=m.name, file=f"{PACKAGE}/{m.file}", status=status,
                       killed_by=res["failed"], passed=res["passed"], seconds=res["seconds"],
                       edits=[{"find": f, "replace": r} for f, r in m.edits])
            if status == "SURVIVED":
                row["output_tail"] = res["output_tail"]
            results.append(row)
            first = res["failed"][0] if res["failed"] else "-"
            print(f"[{m.id:>3}] {status:<8} {m.name}  ({res['seconds']} s; first: {first})", flush=True)
            if not args.keep:
                shutil.rmtree(scratch, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    def short(nodeid: str) -> str:
        return nodeid.replace("tests/", "", 1)

    print()
    print("| # | mutation | file | result | killing tests |")
    print("|---|---|---|---|---|")
    for r in results:
        killers = ", ".join(f"`{short(t)}`" for t in r["killed_by"]) or "-"
        print(f"| {r['id']} | {r['mutation']} | `{r['file']}` | {r['status']} | {killers} |")
    survived = [r for r in results if r["status"] == "SURVIVED"]
    print(f"\n{len(results) - len(survived)}/{len(results)} mutations killed"
          + ("" if args.all_failures else " (-x: only the first failing test is listed)"))

    payload = dict(tests=args.tests, stop_first=not args.all_failures,
                   baseline=dict(failed=base["failed"], passed=base["passed"], imported_from=base["origin"]),
                   mutations=results)
    Path(args.out).write_text(json.dumps(payload, indent=2))
    print(f"wrote {args.out}")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
