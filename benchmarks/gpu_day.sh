#!/usr/bin/env bash
# GPU day: everything this project measures on a GPU, in ONE command on one H200 (the device tool: no network
# there, one command <= 10 minutes, ~13 usable minutes in all), from the repository root:
#
#   bash benchmarks/gpu_wheels.sh                          # here, once: .whl/ (what the GPU image lacks)
#   run(command="bash benchmarks/gpu_day.sh", carry=[".whl"], timeout_s=600)
#   bash benchmarks/gpu_day.sh --cpu                       # every stage at tiny size on the CPU (the replica
#                                                          # benchmarks/device_replica.sh runs this)
#
# Stages, in priority order, each under its own timeout (their sum is below the whole run's limit, 540 s on
# the GPU), each writing its file into $OUT the moment it ends; a failed stage does not stop the next ones,
# except the first (nothing after it can run without its imports):
#   env      install .whl/ into $SITE (pip --no-index --no-deps --target), then every import the stages need,
#            versions, the GPU (benchmarks/gpu_day_env.py)                                   -> env.json
#   tests    tests/test_gpu.py: flash kernel, bf16 vs fp32, no-sync step, compiled vs eager in bf16,
#            CUDA-graph decoding, a bf16 fit through the CLI (pytest -n 4)                   -> tests.xml
#   train    1B training tokens/s, TFLOP/s, MFU: ours eager and compiled vs HF Llama / HF T5Gemma at the
#            same dims, one process (benchmarks/gpu_day_peers.py train)                      -> train.json
#   decode   1B decoding new tokens/s and fraction of the HBM bound: ours compiled vs HF     -> decode.json
#   zero3    ZeRO-3 1B, both families: steps, sharded checkpoint, resume == uninterrupted, peak memory
#            next to `plan` (benchmarks/gpu_day_sharded.py --strategy zero3)                 -> zero3.json
#   fsdp     FSDP2 1B, both families, bf16-mixed: steps, peak memory next to `plan`          -> fsdp.json
# plus gpu_day.log (everything printed) and summary.md (status, seconds and the table of every stage):
# 8 files, the most the device tool brings back. Exit status: the number of failed stages (0: all ok).
set -uo pipefail
MODE=gpu
[[ ${1:-} == --cpu ]] && MODE=cpu && shift
[[ $# -eq 0 ]] || { echo "usage: bash benchmarks/gpu_day.sh [--cpu]" >&2; exit 2; }
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
OUT=${OUT:-/tmp/gpu_day_out}
SITE=${GPU_DAY_SITE:-/tmp/site}
SCRATCH=$(mktemp -d /tmp/gpu_day.XXXXXX)
mkdir -p "$OUT"
LOG=$OUT/gpu_day.log
SUMMARY=$OUT/summary.md
: >"$LOG"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false DS_BUILD_OPS=0
export TORCHINDUCTOR_CACHE_DIR=$SCRATCH/inductor TRITON_CACHE_DIR=$SCRATCH/triton  # fresh: honest compile times

if [[ $MODE == gpu ]]; then
  TOTAL=540
  STAGES=(env:40 tests:80 train:140 decode:95 zero3:120 fsdp:60)
  PRESET=1b; DEVICE=cuda; CPU_FLAG=(); NPROC=4; STEPS=(--steps 3 --warmup 2)
else
  TOTAL=1500
  STAGES=(env:120 tests:150 train:420 decode:300 zero3:240 fsdp:240)
  PRESET=tiny; DEVICE=cpu; CPU_FLAG=(--cpu); NPROC=2; STEPS=(--steps 1 --warmup 1)
  # inductor compiles in-process: a pool of compile workers costs more than it saves on a small CPU
  export TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-1}
fi
sum=0; for s in "${STAGES[@]}"; do sum=$((sum + ${s#*:})); done
((sum < TOTAL)) || { echo "gpu_day: stage timeouts add up to ${sum}s, not below the ${TOTAL}s limit" >&2; exit 2; }

START=$(date +%s)
FAILED=0
ENV_OK=1
{ echo "# gpu_day ($MODE), $(date -u '+%Y-%m-%d %H:%M UTC'), $(hostname)"
  echo
  echo "| stage | status | seconds | timeout s |"
  echo "|---|---|---|---|"; } >"$SUMMARY"
TABLES=$SCRATCH/tables.md
: >"$TABLES"

log() { echo "$*" | tee -a "$LOG"; }

# run one stage: NAME CMD...; its timeout is STAGES' figure, cut to what is left of TOTAL
stage() {
  local name=$1; shift
  local limit
  for s in "${STAGES[@]}"; do [[ ${s%%:*} == "$name" ]] && limit=${s#*:}; done
  local left=$((TOTAL - ($(date +%s) - START) - 5))
  ((limit > left)) && limit=$left
  if ((ENV_OK == 0)); then
    echo "| $name | skipped (env failed) | 0 | $limit |" >>"$SUMMARY"; log "=== $name: skipped (env failed)"; return
  fi
  if ((limit < 10)); then
    echo "| $name | skipped (no time left) | 0 | $limit |" >>"$SUMMARY"; log "=== $name: skipped (no time left)"
    FAILED=$((FAILED + 1)); return
  fi
  log "=== $name (timeout ${limit}s) $(date -u +%T)"
  local t0 rc status
  t0=$(date +%s.%N)
  timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  local secs
  secs=$(python3 -c "import time; print(f'{time.time() - $t0:.0f}')")
  case $rc in
    0) status=ok ;;
    124 | 137) status="TIMEOUT" ;;
    *) status="FAILED (exit $rc)" ;;
  esac
  [[ $rc == 0 ]] || FAILED=$((FAILED + 1))
  echo "| $name | $status | $secs | $limit |" >>"$SUMMARY"
  log "=== $name: $status in ${secs}s"
  # the stage's table (from its JSON, or pytest's counts) goes into summary.md right away
  python3 - "$name" "$OUT" "$TABLES" <<'PY' 2>>"$LOG"
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path
name, out, tables = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
text = None
if name == "tests" and (out / "tests.xml").exists():
    root = ET.parse(out / "tests.xml").getroot()
    s = root if root.tag == "testsuite" else root.find("testsuite")
    n, f, e, sk = (int(s.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
    rows = ["| test | result | s |", "|---|---|---|"]
    for case in s.iter("testcase"):
        res = "passed"
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                res = f"{tag}: {(el.get('message') or '')[:100]}"
        rows.append(f"| {case.get('name')} | {res} | {float(case.get('time', 0)):.1f} |")
    text = f"{n} tests: {n - f - e - sk} passed, {f} failed, {e} errors, {sk} skipped\n\n" + "\n".join(rows)
else:
    f = out / f"{name}.json"
    if f.exists():
        try:
            text = json.loads(f.read_text()).get("table")
        except ValueError as err:
            text = f"(unreadable {f.name}: {err})"
with open(tables, "a") as t:
    t.write(f"\n## {name}\n\n{text or '(no table: see gpu_day.log)'}\n")
PY
  return 0
}

install_wheels() {
  if compgen -G ".whl/*.whl" >/dev/null; then
    echo "installing $(ls .whl/*.whl | wc -l) carried wheels into $SITE"
    rm -rf "$SITE"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
      || { echo "gpu_day: installing .whl/ failed (make it with: bash benchmarks/gpu_wheels.sh)"; return 1; }
  else
    echo "no .whl/ here: using the installed packages (on the GPU machine: bash benchmarks/gpu_wheels.sh, carry .whl)"
  fi
  if [[ $MODE == gpu ]]; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; fi
  python3 benchmarks/gpu_day_env.py $CPU_FLAG_WORD --out "$OUT/env.json"
}
CPU_FLAG_WORD=${CPU_FLAG[*]:-}
export -f install_wheels
export MODE SITE OUT CPU_FLAG_WORD
if compgen -G ".whl/*.whl" >/dev/null; then export PYTHONPATH=$SITE:$REPO; else export PYTHONPATH=$REPO; fi

stage env bash -c install_wheels
if ! grep -q "^| env | ok " "$SUMMARY"; then ENV_OK=0; fi
stage tests python3 -m pytest -q -p no:cacheprovider -n "$NPROC" tests/test_gpu.py --junitxml="$OUT/tests.xml"
stage train python3 benchmarks/gpu_day_peers.py train --preset "$PRESET" --device "$DEVICE" "${STEPS[@]}" \
  --out "$OUT/train.json"
stage decode python3 benchmarks/gpu_day_peers.py decode --preset "$PRESET" --device "$DEVICE" --out "$OUT/decode.json"
stage zero3 python3 benchmarks/gpu_day_sharded.py --strategy zero3 "${CPU_FLAG[@]}" --steps 4 --resume-steps 2 \
  --root "$SCRATCH/zero3" --out "$OUT/zero3.json"
stage fsdp python3 benchmarks/gpu_day_sharded.py --strategy fsdp "${CPU_FLAG[@]}" --steps 4 --resume-steps 0 \
  --root "$SCRATCH/fsdp" --out "$OUT/fsdp.json"

{ echo; echo "total $(($(date +%s) - START)) s of ${TOTAL} s; failed stages: $FAILED"; cat "$TABLES"; } >>"$SUMMARY"
rm -rf "$SCRATCH"
echo
cat "$SUMMARY"
exit "$FAILED"
