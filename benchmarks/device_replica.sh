#!/usr/bin/env bash
# A CPU replica of the GPU machine's software, and the GPU day's dry run inside it.
#
#   bash benchmarks/gpu_wheels.sh && bash benchmarks/device_replica.sh
#   bash benchmarks/device_replica.sh --pytest "tests/test_models.py tests/test_parallel.py"   # + these tests
#
# 1. A venv (REPLICA_VENV, default ~/.cache/lightning_redllm/gpu-replica; made once, reused) of the image's
#    Python major.minor (python3.12 on PATH, else pyenv's newest 3.12) holding exactly the `have ... use`
#    packages of benchmarks/gpu_image.txt at the image's versions (torch 2.11.0 from the registry: a ~3 GB
#    CUDA build the first time) and whatever pip pulls in for them; it then fails if the venv holds any
#    package that is not in the image, or any pinned one at another version (gpu_image.py check-env).
# 2. .whl/ checked against the image (gpu_image.py check-wheels), then `bash benchmarks/gpu_day.sh --cpu` with
#    the venv's python3 first on PATH and nothing else: gpu_day.sh installs .whl/ itself exactly as on the GPU
#    (pip --no-index --no-deps --no-compile --target, PYTHONPATH=<site>:<repo>); the project is never
#    pip-installed, so a package missing from the image and from .whl/ fails here as it would there.
# 3. With --pytest FILES: each file under the same interpreter and PYTHONPATH (pytest is the image's).
# The report (versions, pass/fail and seconds per stage and per test file, the stages' tables) goes to
# benchmarks/results/replica.md (--report PATH to change). Exit status: 0 only if every stage and test passed.
set -uo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
VENV=${REPLICA_VENV:-$HOME/.cache/lightning_redllm/gpu-replica}
REPORT=$REPO/benchmarks/results/replica.md
PYTEST_FILES=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --pytest) PYTEST_FILES=$2; shift 2 ;;
    --report) REPORT=$2; shift 2 ;;
    *) echo "usage: bash benchmarks/device_replica.sh [--pytest \"FILES\"] [--report PATH]" >&2; exit 2 ;;
  esac
done
IMG="python3 $REPO/benchmarks/gpu_image.py"
WORK=$(mktemp -d /tmp/device_replica.XXXXXX)
T_START=$(date +%s)

# 1. the venv
PY=$($IMG find-python) || exit 1
if [[ ! -x $VENV/bin/python ]]; then
  echo "replica: making $VENV with $PY"
  "$PY" -m venv "$VENV" || exit 1
fi
mapfile -t USE < <($IMG use)
echo "replica: installing the image's packages: ${USE[*]}"
t0=$(date +%s)
env -u PYTHONPATH "$VENV/bin/python" -m pip install -q "${USE[@]}" 2>&1 | grep -v "^WARNING: Location .* is ignored"
[[ ${PIPESTATUS[0]} == 0 ]] || { echo "replica: pip install failed" >&2; exit 1; }
T_INSTALL=$(($(date +%s) - t0))
env -u PYTHONPATH "$VENV/bin/python" "$REPO/benchmarks/gpu_image.py" check-env --json "$WORK/env_check.json" \
  || { echo "replica: the venv is not a copy of the GPU image (above)" >&2; exit 1; }

# 2. the wheels, then the GPU day's dry run
compgen -G ".whl/*.whl" >/dev/null || { echo "replica: no .whl/ (run: bash benchmarks/gpu_wheels.sh)" >&2; exit 1; }
$IMG check-wheels .whl >/dev/null || exit 1
echo "replica: bash benchmarks/gpu_day.sh --cpu (python3 = $VENV/bin/python3)"
t0=$(date +%s)
env -u PYTHONPATH PATH="$VENV/bin:$PATH" OUT="$WORK/out" GPU_DAY_SITE="$WORK/site" bash benchmarks/gpu_day.sh --cpu
DAY_RC=$?
T_DAY=$(($(date +%s) - t0))

# 3. test files under the replica
PYTEST_RC=0
for f in $PYTEST_FILES; do
  n=$(basename "$f" .py)
  echo "replica: pytest $f"
  t0=$(date +%s)
  env PATH="$VENV/bin:$PATH" PYTHONPATH="$WORK/site:$REPO" timeout -k 10 2400 \
    python3 -m pytest -q -p no:cacheprovider "$f" --junitxml="$WORK/pytest_$n.xml" 2>&1 | tee "$WORK/pytest_$n.log" | tail -25
  rc=${PIPESTATUS[0]}
  echo "$f $rc $(($(date +%s) - t0))" >>"$WORK/pytest_runs.txt"
  [[ $rc == 0 ]] || PYTEST_RC=1
done

# the report
mkdir -p "$(dirname "$REPORT")"
env -u PYTHONPATH "$VENV/bin/python" - "$WORK" "$REPORT" "$VENV" "$T_INSTALL" "$T_DAY" "$DAY_RC" "$(($(date +%s) - T_START))" <<'PY'
import json, platform, re, sys, xml.etree.ElementTree as ET
from pathlib import Path
work, report, venv, t_install, t_day, day_rc, t_all = Path(sys.argv[1]), Path(sys.argv[2]), *sys.argv[3:]
env = json.loads((work / "env_check.json").read_text())
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
import os, time
lines = [f"# CPU replica of the GPU image: `gpu_day.sh --cpu`" + (" and tests" if (work / "pytest_runs.txt").exists() else ""),
         "",
         f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu}, {os.cpu_count()} cores (shared with other jobs: "
         "times are this machine's, not the GPU's). Made by `bash benchmarks/gpu_wheels.sh && bash "
         "benchmarks/device_replica.sh" + (" --pytest ...`" if (work / "pytest_runs.txt").exists() else "`") + ".",
         "",
         f"Replica: Python {env['python']} (the image: {env['image_python']}), venv `{venv}`, "
         f"{len(env['packages'])} distributions, every one in the image's list (`benchmarks/gpu_image.txt`); "
         f"install/check {t_install} s. The project is not installed: PYTHONPATH = carried wheels + the repository.",
         "", "| package | replica | image |", "|---|---|---|"]
sys.path.insert(0, "benchmarks")
import gpu_image
image = gpu_image.load()
by_name = {gpu_image.canonicalize_name(p["name"]): p for p in env["packages"]}
for key in image.use:  # what gpu_day.sh imports; the rest is what pip pulled in for them
    p = by_name.get(key, {"name": key, "version": "MISSING"})
    lines.append(f"| {p['name']} | {p['version']} | {image.have[key] or 'not read there'} |")
others = sorted(f"{p['name']} {p['version']}" for k, p in by_name.items() if k not in image.use)
lines += ["", f"Pulled in by those (all in the image's list): {', '.join(others)}."]
whl = sorted(x.name for x in Path(".whl").glob("*.whl"))
lines += ["", f"Carried wheels (`.whl/`, {len(whl)}): " + ", ".join(f"`{w}`" for w in whl), ""]
summary = (work / "out" / "summary.md")
lines += [f"## `gpu_day.sh --cpu`: exit {day_rc}, {t_day} s", ""]
if summary.exists():
    body = summary.read_text().split("\n", 1)[1]  # drop its title line
    body = re.sub(r"^## ", "### ", body, flags=re.M)
    lines.append(body.strip())
else:
    lines.append("(no summary.md: see the console output)")
runs = work / "pytest_runs.txt"
if runs.exists():
    lines += ["", "## Test files under the replica (torch of the image, carried wheels, no install)", "",
              "| file | result | passed | failed | errors | skipped | seconds |", "|---|---|---|---|---|---|---|"]
    failed_names = []
    for line in runs.read_text().split("\n"):
        if not line.strip():
            continue
        f, rc, secs = line.split()
        xml = work / f"pytest_{Path(f).stem}.xml"
        if xml.exists():
            root = ET.parse(xml).getroot()
            s = root if root.tag == "testsuite" else root.find("testsuite")
            n, fl, er, sk = (int(s.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
            for case in s.iter("testcase"):
                for tag in ("failure", "error"):
                    el = case.find(tag)
                    if el is not None:
                        msg = (el.get("message") or "").replace("\n", " ")[:220]
                        failed_names.append(f"- `{f}::{case.get('name')}` ({tag}): {msg}")
            res = "pass" if rc == "0" else f"FAIL (exit {rc})"
            lines.append(f"| {f} | {res} | {n - fl - er - sk} | {fl} | {er} | {sk} | {secs} |")
        else:
            lines.append(f"| {f} | FAIL (exit {rc}, no report) | | | | | {secs} |")
    if failed_names:
        lines += ["", "Failures:", ""] + failed_names
lines += ["", f"Whole replica run: {t_all} s."]
report.write_text("\n".join(lines) + "\n")
print(f"replica: report in {report}")
PY
rm -rf "$WORK"
echo "replica: gpu_day --cpu exit $DAY_RC, tests exit $PYTEST_RC, $(($(date +%s) - T_START)) s"
[[ $DAY_RC == 0 && $PYTEST_RC == 0 ]]
