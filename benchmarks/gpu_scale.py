"""DeepSpeed ZeRO-3 on one GPU at the study's 1B size: a few steps of RedLLM and DecLLM under the real
``DeepSpeedStrategy`` (the ``recipes/strategy/zero3.yaml`` config, buckets scaled to the width), a
sharded checkpoint, a resume, an export; peak GPU memory next to ``python -m lightning_redllm plan``'s
prediction for the same setting. Prints a table and writes JSON.

    python benchmarks/gpu_scale.py --out benchmarks/results/gpu_scale.json        # on a GPU machine
    python benchmarks/gpu_scale.py --cpu                                           # dry run: tiny, CPU shim

Each family runs in its own process (clean peak-memory counters): ``--worker FAMILY``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def zero3_config(d_model: int) -> dict:
    import yaml

    recipe = yaml.safe_load((REPO / "recipes" / "strategy" / "zero3.yaml").read_text())
    cfg = recipe["trainer"]["strategy"]["init_args"]["config"]
    z = cfg["zero_optimization"]
    z.update(reduce_bucket_size=d_model ** 2, stage3_prefetch_bucket_size=int(0.9 * d_model ** 2),
             stage3_param_persistence_threshold=10 * d_model)  # the recipe's documented rule
    return cfg


def worker(a: argparse.Namespace) -> dict:
    import lightning as L
    import torch

    from lightning_redllm.modules import DecLLMModule, RedLLMModule

    cls = RedLLMModule if a.worker == "redllm" else DecLLMModule
    preset = f"{a.worker}-{'tiny' if a.cpu else a.size}"

    def module():
        L.seed_everything(0)
        return cls(preset=preset, optimizer="adamw", lr=1e-4, warmup_steps=0, schedule="constant",
                   activation_checkpointing=True, loss_normalization="micro_batch",
                   tokenizer="bundled-bpe-4k" if a.cpu else "mistral-v1-32k")

    m = module()
    vocab = m.config.vocab_size
    g = torch.Generator().manual_seed(0)
    batches = [{"tokens": torch.randint(3, vocab, (a.micro_batch, a.seq_len), generator=g)}
               for _ in range(a.steps + a.resume_steps)]
    if a.cpu:
        sys.path.insert(0, str(REPO / "tests" / "data"))
        from ds_cpu import CPUDeepSpeedStrategy

        strategy_cls, accel = CPUDeepSpeedStrategy, "cpu"
    else:
        from lightning.pytorch.strategies import DeepSpeedStrategy

        strategy_cls, accel = DeepSpeedStrategy, "gpu"

    def ds_config():  # pre-batched loaders carry no batch_size for Lightning to infer it from
        return {**zero3_config(m.config.d_model), "train_micro_batch_size_per_gpu": a.micro_batch}

    strategy = strategy_cls(config=ds_config())
    losses: list[float] = []
    times: list[float] = []

    class Record(L.Callback):
        def on_train_batch_start(self, *args):
            self.t = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))
            times.append(time.perf_counter() - self.t)

    def trainer(steps):
        return L.Trainer(accelerator=accel, devices=1, max_steps=steps, precision="bf16-mixed", strategy=strategy,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=a.root, callbacks=[Record()])

    cuda = torch.cuda.is_available() and not a.cpu
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t = trainer(a.steps)
    t.fit(m, train_dataloaders=torch.utils.data.DataLoader(batches[: a.steps], batch_size=None))
    peak = torch.cuda.max_memory_allocated() if cuda else None
    ckpt = Path(a.root) / f"{a.worker}.ckpt"
    t.save_checkpoint(ckpt)
    first = list(losses)
    # resume from the sharded checkpoint for a few more steps (a fresh module and strategy)
    losses.clear()
    m2 = module()
    strategy = strategy_cls(config=ds_config())
    t2 = trainer(a.steps + a.resume_steps)
    t2.fit(m2, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None), ckpt_path=str(ckpt))
    resumed = list(losses)
    out = Path(a.root) / f"{a.worker}.safetensors"
    e = subprocess.run([sys.executable, "-m", "lightning_redllm", "export", "--ckpt", str(ckpt), "--out", str(out)],
                       capture_output=True, text=True)
    from lightning_redllm.config import num_parameters
    from lightning_redllm.plan import activation_mode, activation_peak_bytes, model_state_bytes

    st = model_state_bytes(m.config, strategy="zero3", precision="bf16-mixed", optimizer="adamw", offload="none",
                           gpus=1, nodes=1)
    predicted = st.persistent + st.buffers + activation_peak_bytes(
        m.config, activation_mode("zero3", "bf16-mixed"), batch=a.micro_batch, seq_len=a.seq_len, checkpointing=True)
    tokens = a.micro_batch * a.seq_len
    steady = sorted(times[1:a.steps])[len(times[1:a.steps]) // 2] if a.steps > 1 else times[0]
    return {"family": a.worker, "preset": preset, "params": num_parameters(m.config), "micro_batch": a.micro_batch,
            "seq_len": a.seq_len, "losses": first, "resumed_losses": resumed, "export_ok": e.returncode == 0,
            "export_error": e.stderr[-500:] if e.returncode else "", "peak_allocated_bytes": peak,
            "planned_peak_bytes": predicted, "median_step_s": steady, "tokens_per_s": tokens / steady,
            "device": torch.cuda.get_device_name() if cuda else "cpu (shim)"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="1b")
    p.add_argument("--families", default="redllm,decllm")
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--resume-steps", type=int, default=2)
    p.add_argument("--cpu", action="store_true", help="dry run: tiny presets on the CPU shim of tests/data/ds_cpu.py")
    p.add_argument("--root", default="/tmp/gpu_scale")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gpu_scale.json"))
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.cpu and a.seq_len == 2048:
        a.seq_len, a.micro_batch = 64, 2
    Path(a.root).mkdir(parents=True, exist_ok=True)
    if a.worker:
        res = worker(a)
        Path(a.root, f"{a.worker}.json").write_text(json.dumps(res))
        sys.stdout.flush()
        os._exit(0)  # DeepSpeed/NCCL teardown can hang or abort after the result is written
    rows = []
    for fam in a.families.split(","):
        args = [sys.executable, __file__, "--worker", fam, "--size", a.size, "--micro-batch", str(a.micro_batch),
                "--seq-len", str(a.seq_len), "--steps", str(a.steps), "--resume-steps", str(a.resume_steps),
                "--root", a.root] + (["--cpu"] if a.cpu else [])
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(29500 + len(rows))}
        r = subprocess.run(args, capture_output=True, text=True, env=env)
        res_file = Path(a.root, f"{fam}.json")
        if r.returncode != 0 or not res_file.exists():
            print(f"{fam}: FAILED\n{r.stderr[-3000:]}")
            rows.append({"family": fam, "error": r.stderr[-2000:]})
            continue
        rows.append(json.loads(res_file.read_text()))
    gib = 1024 ** 3
    print("| model | params | micro-batch x seq | tokens/s | peak GiB (measured) | peak GiB (plan) | losses | resumed | export |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['family']} | failed | | | | | | | |")
            continue
        meas = f"{r['peak_allocated_bytes'] / gib:.1f}" if r["peak_allocated_bytes"] else "-"
        print(f"| {r['preset']} | {r['params'] / 1e9:.2f}B | {r['micro_batch']} x {r['seq_len']} | "
              f"{r['tokens_per_s']:,.0f} | {meas} | {r['planned_peak_bytes'] / gib:.1f} | "
              f"{' '.join(f'{x:.3f}' for x in r['losses'])} | {' '.join(f'{x:.3f}' for x in r['resumed_losses'])} | "
              f"{'ok' if r['export_ok'] else 'FAILED'} |")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"rows": rows, "date": time.strftime("%Y-%m-%d")}, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
