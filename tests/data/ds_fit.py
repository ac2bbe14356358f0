"""2-process CPU (gloo) fit under DeepSpeed ZeRO-3 (or DDP, for comparison); used by tests/test_deepspeed.py.

usage: python ds_fit.py FAMILY STRATEGY PRECISION MAX_STEPS ROOT [RESUME_FROM]
  STRATEGY: zero3 | zero3-offload (the recipes in recipes/strategy/) | ddp | single (one process, replaying
  the batches a 2-rank run recorded in ROOT/../<run>/batches-rank<R>.pt, given as DS_FIT_REPLAY=<run folder>:
  step i trains on rank 0's batch i followed by rank 1's).  Writes ROOT/result-rank<R>.json per rank (per-step losses; whether the
  parameters are ZeRO-partitioned), then saves a checkpoint to ROOT/final.ckpt (a folder of per-rank
  shards under ZeRO-3). DS_FIT_SAVE_AT=<k> also saves ROOT/step-<k>.ckpt mid-run, right after optimizer step k
  (where Lightning's ModelCheckpoint saves), for a resume test that needs no separate short run.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import lightning as L  # noqa: E402

from ds_cpu import CPUDeepSpeedStrategy  # noqa: E402
from lightning_redllm.data import PretrainDataModule  # noqa: E402
from lightning_redllm.modules import DecLLMModule, RedLLMModule  # noqa: E402

family, strategy, precision, steps, root = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
resume_from = sys.argv[6] if len(sys.argv) > 6 else None
cls = RedLLMModule if family == "redllm" else DecLLMModule
L.seed_everything(0)
module = cls(overrides=dict(d_model=64, n_heads=2, head_dim=32, ffn_dim=128, n_layers=2, n_encoder_layers=1,
                            n_decoder_layers=1), warmup_steps=0, lr=3e-3, schedule="constant",
             loss_normalization="micro_batch",
             activation_checkpointing=strategy != "ddp",  # as the zero3 recipes set it; recompute changes no math
             init_from=os.environ.get("DS_FIT_INIT_FROM") or None)
losses = []


batches = []
save_at = int(os.environ.get("DS_FIT_SAVE_AT", "0")) or None


class Record(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        losses.append(float(outputs["loss"]))
        batches.append(batch["tokens"].clone())
        if trainer.global_step == save_at:
            trainer.save_checkpoint(os.path.join(root, f"step-{save_at}.ckpt"))


devices, data = 2, PretrainDataModule(seq_len=64, batch_size=2, num_workers=0)
if strategy == "ddp":
    ds = "ddp"
elif strategy == "single":
    import torch  # noqa: E402

    replay = os.environ["DS_FIT_REPLAY"]
    ranks = [torch.load(os.path.join(replay, f"batches-rank{r}.pt")) for r in (0, 1)]
    steps = min(steps, len(ranks[0]))
    data = torch.utils.data.DataLoader([{"tokens": torch.cat([a, b])} for a, b in zip(*ranks)], batch_size=None)
    ds, devices = "auto", 1
else:
    # the shipped recipe's DeepSpeed config (recipes/strategy/zero3*.yaml), made strict for a tiny model:
    # release every parameter right after its module ran (no persistence, prefetch or live budget), so a
    # weight used outside its own module (the tied output projection) must really be gathered for it
    import yaml  # noqa: E402

    recipe = yaml.safe_load(open(os.path.join(REPO, "recipes", "strategy", f"{strategy}.yaml")))
    config = recipe["trainer"]["strategy"]["init_args"]["config"]
    config["zero_optimization"].update(stage3_param_persistence_threshold=0, stage3_max_live_parameters=0,
                                       stage3_prefetch_bucket_size=0, stage3_max_reuse_distance=0)
    if "offload_optimizer" in config["zero_optimization"]:
        config["zero_optimization"]["offload_optimizer"]["pin_memory"] = False  # no CUDA to pin for
    ds = CPUDeepSpeedStrategy(config=config)
trainer = L.Trainer(accelerator="cpu", devices=devices, max_steps=steps, precision=precision, strategy=ds, logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                    num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=root, callbacks=[Record()])
if strategy == "single":
    trainer.fit(module, train_dataloaders=data)
else:
    trainer.fit(module, datamodule=data, ckpt_path=resume_from)
partitioned = hasattr(module.model.embed.weight, "ds_id")
engine = getattr(trainer.strategy, "deepspeed_engine", None)
offload = bool(engine.zero_offload_optimizer()) if engine is not None else False
local = module.model.embed.weight.numel()
trainer.save_checkpoint(os.path.join(root, "final.ckpt"))
# greedy tokens from the live (still partitioned) model: every rank runs it, ZeRO-3 gathers per module
from lightning_redllm.generate import SamplingOptions, generate  # noqa: E402

live_tokens = generate(module.model, [[5, 6, 7, 8], [9, 10]], bos_id=1, eos_id=None,
                       options=SamplingOptions(max_new_tokens=6))
import torch  # noqa: E402

torch.save(batches, os.path.join(root, f"batches-rank{trainer.global_rank}.pt"))
# one file per rank: two processes printing to one pipe interleave their lines
with open(os.path.join(root, f"result-rank{trainer.global_rank}.json"), "w") as f:
    json.dump({"rank": trainer.global_rank, "losses": losses, "partitioned": partitioned, "local_embed_numel": local,
               "optimizer_offloaded": offload, "live_tokens": live_tokens}, f)
trainer.strategy.barrier()
# gloo's threads sometimes abort the interpreter during teardown; everything is printed and saved
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
