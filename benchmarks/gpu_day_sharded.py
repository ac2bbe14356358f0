"""gpu_day stages 5 and 6: ZeRO-3 and FSDP2 at 1B on one GPU, peak memory next to ``plan``.

    python benchmarks/gpu_day_sharded.py --strategy zero3 --out zero3.json                 # GPU
    python benchmarks/gpu_day_sharded.py --strategy fsdp --resume-steps 0 --out fsdp.json  # GPU
    python benchmarks/gpu_day_sharded.py --strategy zero3 --cpu --out zero3.json           # dry run, tiny

Each family (RedLLM, DecLLM) runs in its own process (clean peak-memory counters), both at once: on
the GPU they share the card, so the step times here are not throughput figures (stage 3 has those);
the peak memory of each process is its own. Each run is the real Lightning path of the recipe:
``recipes/strategy/{zero3,fsdp}.yaml``'s strategy, init arguments, precision (bf16-mixed where the recipe
sets none) and model arguments (activation checkpointing), ZeRO-3 buckets scaled to the width as the
recipe documents; AdamW, micro-batch x sequence of random tokens through a torchdata
``StatefulDataLoader`` (Lightning saves and restores its position). With ``--resume-steps N``: the run
trains ``steps + N`` steps saving a sharded checkpoint after ``steps``; a fresh process-state
(module, strategy, trainer) resumes from it and its N losses must match the uninterrupted run's
(relative tolerance: 1e-2 in bf16 on the GPU, 1e-4 on the CPU). Peak allocated GPU memory over the
training steps is printed next to ``lightning_redllm.scale.plan``'s prediction for the same setting (the
``plan`` command's figures: states + buffers + activation peak at this micro-batch). ``--cpu``: tiny
presets, ZeRO-3 through the CPU shim of ``tests/data/ds_cpu.py``, FSDP2 on gloo. The JSON is rewritten
as each family finishes; exit 1 if any family failed or a resume did not match.
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def recipe(strategy: str) -> dict:
    import yaml

    return yaml.safe_load((REPO / "recipes" / "strategy" / f"{strategy}.yaml").read_text())


def _timeout(value):
    """A recipe's collective timeout as the timedelta Lightning's strategies take (seconds or H:MM:SS)."""
    if isinstance(value, (int, float)):
        return dt.timedelta(seconds=value)
    if isinstance(value, str) and value.count(":") == 2:
        h, m, s = value.split(":")
        return dt.timedelta(hours=int(h), minutes=int(m), seconds=float(s))
    return value


def worker(a: argparse.Namespace) -> dict:
    import lightning as L
    import torch
    from torchdata.stateful_dataloader import StatefulDataLoader

    from lightning_redllm.config import num_parameters
    from lightning_redllm.modules import DecLLMModule, RedLLMModule
    from lightning_redllm.scale.plan import activation_mode, activation_peak_bytes, model_state_bytes

    rec = recipe(a.strategy)
    tr = rec["trainer"]
    strat = tr["strategy"]
    init_args = {k: (_timeout(v) if k == "timeout" else v) for k, v in (strat.get("init_args") or {}).items()}
    model_args = (rec.get("model") or {}).get("init_args") or {}
    precision = str(tr.get("precision", "bf16-mixed"))
    extra_trainer = {k: v for k, v in tr.items() if k not in ("accelerator", "devices", "num_nodes", "strategy",
                                                              "precision") and isinstance(v, (str, int, float, bool))}
    cls = RedLLMModule if a.worker == "redllm" else DecLLMModule
    preset = f"{a.worker}-{'tiny' if a.cpu else a.size}"

    def module():
        L.seed_everything(0)
        return cls(preset=preset, optimizer="adamw", lr=1e-4, warmup_steps=0, schedule="constant",
                   loss_normalization="micro_batch", tokenizer="bundled-bpe-4k" if a.cpu else "mistral-v1-32k",
                   **model_args)

    m = module()
    cfg = m.config
    g = torch.Generator().manual_seed(0)
    total = a.steps + a.resume_steps
    batches = [{"tokens": torch.randint(3, cfg.vocab_size, (a.micro_batch, a.seq_len), generator=g)}
               for _ in range(total)]

    def strategy():
        if a.strategy == "zero3":
            config = dict(init_args.get("config") or {})
            z = dict(config.get("zero_optimization") or {})
            d = cfg.d_model  # the recipe's documented rule for other widths
            z.update(reduce_bucket_size=d ** 2, stage3_prefetch_bucket_size=int(0.9 * d ** 2),
                     stage3_param_persistence_threshold=10 * d)
            # pre-batched loaders carry no batch_size for Lightning to infer it from
            config.update(zero_optimization=z, train_micro_batch_size_per_gpu=a.micro_batch)
            kwargs = {**init_args, "config": config}
            if a.cpu:
                sys.path.insert(0, str(REPO / "tests" / "data"))
                import deepspeed.ops
                from ds_cpu import CPUDeepSpeedStrategy

                # DeepSpeed's CPU accelerator JIT-compiles a shared-memory all-reduce (C++, minutes on a
                # loaded 2-core machine, once per torch build) for a world of one that never uses it; the
                # CUDA accelerator has no such op, so the GPU path is untouched by this
                deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False

                return CPUDeepSpeedStrategy(**kwargs)
        else:
            kwargs = dict(init_args)
        mod, _, name = strat["class_path"].rpartition(".")
        return getattr(importlib.import_module(mod), name)(**kwargs)

    cuda = torch.cuda.is_available() and not a.cpu
    losses: list[float] = []
    times: list[float] = []
    peaks: list[int] = []

    class Record(L.Callback):
        def on_train_batch_start(self, *args):
            self.t = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))  # a host read: this run is not a throughput figure
            times.append(time.perf_counter() - self.t)
            peaks.append(torch.cuda.max_memory_allocated() if cuda else 0)

    ckpt_dir = Path(a.root) / a.worker / "checkpoints"

    def trainer(resume: bool):
        callbacks = [Record()]
        if a.resume_steps and not resume:
            callbacks.append(L.pytorch.callbacks.ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=a.steps,
                                                                 save_top_k=-1))
        return L.Trainer(accelerator="cpu" if a.cpu else "gpu", devices=1, num_nodes=1, max_steps=total,
                         precision=precision, strategy=strategy(), logger=False, enable_checkpointing=not resume and
                         bool(a.resume_steps), enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=str(Path(a.root) / a.worker),
                         callbacks=callbacks, **extra_trainer)

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    t = trainer(resume=False)
    t.fit(m, train_dataloaders=StatefulDataLoader(batches, batch_size=None))
    fit_s = time.perf_counter() - t0
    first, first_times, first_peaks = list(losses), list(times), list(peaks)
    reserved = torch.cuda.max_memory_reserved() if cuda else None
    param_type = type(next(m.model.parameters())).__name__
    param_dtype = str(next(m.model.parameters()).dtype).replace("torch.", "")
    mp_policy = None
    if a.strategy == "fsdp":  # FSDP2's mixed-precision policy on the root (what the all-gathers carry)
        try:
            mp = m.model._get_fsdp_state()._mp_policy
            mp_policy = {"param_dtype": str(mp.param_dtype), "reduce_dtype": str(mp.reduce_dtype)}
        except Exception as err:  # noqa: BLE001 -- a private torch API: report, do not fail
            mp_policy = {"unreadable": f"{type(err).__name__}: {err}"[:200]}
    resumed: list[float] = []
    resume = {}
    if a.resume_steps:
        ckpt = ckpt_dir / f"epoch=0-step={a.steps}.ckpt"
        size = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file()) if ckpt.is_dir() else ckpt.stat().st_size
        losses.clear()
        t0 = time.perf_counter()
        m2 = module()
        t2 = trainer(resume=True)
        t2.fit(m2, train_dataloaders=StatefulDataLoader(batches, batch_size=None), ckpt_path=str(ckpt))
        resumed = list(losses)
        ref = first[a.steps:]
        worst = max((abs(x - y) / abs(y) for x, y in zip(resumed, ref)), default=float("inf"))
        tol = 1e-4 if a.cpu else 1e-2
        resume = {"checkpoint": ckpt.name, "checkpoint_bytes": size, "sharded": ckpt.is_dir(),
                  "resume_s": round(time.perf_counter() - t0, 1), "resumed_losses": resumed,
                  "uninterrupted_losses": ref, "max_rel_diff": worst, "tolerance": tol,
                  "resume_ok": len(resumed) == len(ref) and worst <= tol}
        shutil.rmtree(Path(a.root) / a.worker, ignore_errors=True)  # a 1B ZeRO-3 checkpoint is ~14 GB
    st = model_state_bytes(cfg, strategy=a.strategy, precision=precision, optimizer="adamw", offload="none",
                           gpus=1, nodes=1)
    act = activation_peak_bytes(cfg, activation_mode(a.strategy, precision), batch=a.micro_batch,
                                seq_len=a.seq_len, checkpointing=bool(model_args.get("activation_checkpointing")))
    planned = max(st.persistent + st.buffers + act, st.persistent + st.step_extra)
    steady = sorted(first_times[1:a.steps])[len(first_times[1:a.steps]) // 2] if a.steps > 1 else first_times[0]
    return {"family": a.worker, "strategy": a.strategy, "strategy_class": strat["class_path"], "preset": preset,
            "params": num_parameters(cfg), "precision": precision, "param_type": param_type,
            "param_dtype": param_dtype, "fsdp_mp_policy": mp_policy, "micro_batch": a.micro_batch, "seq_len": a.seq_len,
            "activation_checkpointing": bool(model_args.get("activation_checkpointing")), "losses": first,
            "step_s": first_times, "fit_s": round(fit_s, 1), "median_step_s": steady,
            "peak_allocated_bytes": max(first_peaks[: a.steps]) if cuda else None,
            "peak_reserved_bytes": reserved,
            "planned_peak_bytes": planned, "planned": {"params": st.params, "grads": st.grads,
                                                       "optimizer": st.optimizer, "buffers": st.buffers,
                                                       "step_extra": st.step_extra, "activations": act,
                                                       "notes": st.notes},
            "losses_finite": all(x == x and abs(x) != float("inf") for x in first), **resume,
            "device": torch.cuda.get_device_name() if cuda else "cpu"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.1f}M"


def table(rows: list[dict]) -> str:
    gib = 2 ** 30
    out = ["| strategy | model | params | precision / stored params | micro-batch x seq | peak GiB measured | "
           "peak GiB plan | measured / plan | losses | resume |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r.get('strategy', '')} | {r['family']} | failed: {r['error'][-160:]!r} | | | | | | | |")
            continue
        meas = r["peak_allocated_bytes"]
        ratio = f"{meas / r['planned_peak_bytes']:.2f}" if meas else "-"
        res = "-"
        if "resume_ok" in r:
            res = (f"{'ok' if r['resume_ok'] else 'MISMATCH'} (max rel diff {r['max_rel_diff']:.1e}, "
                   f"{r['checkpoint_bytes'] / gib:.1f} GiB)")
        mp = r.get("fsdp_mp_policy") or {}
        gather = f", all-gathers {mp['param_dtype'].replace('torch.', '')}" if mp.get("param_dtype") else ""
        out.append(f"| {r['strategy']} | {r['preset']} | {_count(r['params'])} | {r['precision']} / "
                   f"{r['param_dtype']} {r['param_type']}{gather} | {r['micro_batch']} x {r['seq_len']} | "
                   f"{f'{meas / gib:.1f}' if meas else '-'} | {r['planned_peak_bytes'] / gib:.2f} | {ratio} | "
                   f"{' '.join(f'{x:.3f}' for x in r['losses'])} | {res} |")
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strategy", choices=["zero3", "fsdp"], required=True)
    p.add_argument("--size", default="1b")
    p.add_argument("--families", default="redllm,decllm")
    p.add_argument("--micro-batch", type=int, default=None, help="default 4 (GPU), 2 (--cpu)")
    p.add_argument("--seq-len", type=int, default=None, help="default 2048 (GPU), 64 (--cpu)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--resume-steps", type=int, default=2, help="0: no checkpoint / resume")
    p.add_argument("--cpu", action="store_true", help="dry run: tiny presets on the CPU")
    p.add_argument("--root", default=None, help="scratch folder (checkpoints); default /tmp/gpu_day_<strategy>")
    p.add_argument("--out", type=Path, default=None, help="the JSON (required, except for --worker)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    a.micro_batch = a.micro_batch or (2 if a.cpu else 4)
    a.seq_len = a.seq_len or (64 if a.cpu else 2048)
    a.root = a.root or f"/tmp/gpu_day_{a.strategy}"
    if a.resume_steps and a.resume_steps >= a.steps:
        p.error("--resume-steps must be below --steps (the checkpoint is saved every --steps steps)")
    if not a.worker and a.out is None:
        p.error("--out is required")
    if a.worker:
        res = worker(a)
        Path(a.root, f"{a.worker}.json").write_text(json.dumps(res))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # DeepSpeed/NCCL/gloo teardown can hang or abort after the result is written
    shutil.rmtree(a.root, ignore_errors=True)
    Path(a.root).mkdir(parents=True)
    procs = {}
    for fam in a.families.split(","):
        args = [sys.executable, __file__, "--worker", fam, "--strategy", a.strategy, "--size", a.size,
                "--micro-batch", str(a.micro_batch), "--seq-len", str(a.seq_len), "--steps", str(a.steps),
                "--resume-steps", str(a.resume_steps), "--root", a.root] + (["--cpu"] if a.cpu else [])
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
        log = open(Path(a.root, f"{fam}.log"), "w")
        procs[fam] = (subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, text=True, env=env), log)
    result = {"strategy": a.strategy, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "concurrent": True, "rows": []}
    bad = False
    pending = dict(procs)
    while pending:
        for fam, (proc, log) in list(pending.items()):
            if proc.poll() is None:
                continue
            del pending[fam]
            log.close()
            res_file = Path(a.root, f"{fam}.json")
            text = Path(a.root, f"{fam}.log").read_text(errors="replace")
            print(f"--- {a.strategy} {fam}: exit {proc.returncode}\n{text[-2500:]}", flush=True)
            if proc.returncode != 0 or not res_file.exists():
                row = {"family": fam, "strategy": a.strategy, "error": f"exit {proc.returncode}: {text[-1500:]}"}
                bad = True
            else:
                row = json.loads(res_file.read_text())
                bad |= not row["losses_finite"] or not row.get("resume_ok", True)
            result["rows"].append(row)
            result["table"] = table(result["rows"])
            a.out.write_text(json.dumps(result, indent=1))
        time.sleep(0.5)
    print(result["table"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
