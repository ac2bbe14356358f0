"""2-process CPU (gloo) fit under Lightning's ModelParallelStrategy (FSDP2), used by tests/test_parallel.py.

usage: python fsdp_fit.py FAMILY ROOT MAX_STEPS [CKPT_PATH] [--precision 32-true|bf16-mixed]
Prints one JSON line per rank: losses, parameter type, val loss, and the dtypes FSDP2 used: of a
block's parameters while it runs (the all-gathered ones), of its input, of the sharded (master)
parameters and their gradients, and the reduce dtype of the mixed-precision policy.
"""
import json
import os
import sys

import lightning as L
from lightning.pytorch.strategies import ModelParallelStrategy

from lightning_redllm.data import PretrainDataModule
from lightning_redllm.modules import DecLLMModule, RedLLMModule

args = sys.argv[1:]
precision = "32-true"
if "--precision" in args:
    i = args.index("--precision")
    precision = args[i + 1]
    del args[i:i + 2]
family, root, steps = args[0], args[1], int(args[2])
ckpt = args[3] if len(args) > 3 else None
cls = RedLLMModule if family == "redllm" else DecLLMModule
L.seed_everything(0)
module = cls(overrides=dict(d_model=64, n_heads=2, head_dim=32, ffn_dim=128, n_layers=2, n_encoder_layers=1,
                            n_decoder_layers=1), warmup_steps=1, lr=1e-2, schedule="constant")
losses = []
dtypes = {}


class Record(L.Callback):
    def on_fit_start(self, trainer, pl_module):
        from lightning_redllm.nn import Block

        block = next(m for m in pl_module.model.modules() if isinstance(m, Block))

        def probe(module, args):  # runs after FSDP's own pre-forward hook: the parameters are gathered
            if "block_param" not in dtypes:
                dtypes["block_param"] = str(next(module.parameters()).dtype)
                dtypes["block_input"] = str(args[0].dtype)

        block.register_forward_pre_hook(probe)
        state = pl_module.model._get_fsdp_state()
        policy = state._mp_policy
        dtypes["reduce"] = str(policy.reduce_dtype) if policy.param_dtype is not None else "param dtype"

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if "grad" not in dtypes:
            p = pl_module.model.embed.weight
            dtypes["master"], dtypes["grad"] = str(p.dtype), str(p.grad.dtype)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        losses.append([trainer.global_step, float(outputs["loss"])])


trainer = L.Trainer(accelerator="cpu", devices=2, max_steps=steps, precision=precision, logger=False,
                    enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=2, val_check_interval=steps,
                    strategy=ModelParallelStrategy(),  # defaults: shard over the 2 local devices
                    default_root_dir=root, callbacks=[Record(), L.pytorch.callbacks.ModelCheckpoint(
                        dirpath=f"{root}/checkpoints", every_n_train_steps=steps // 2, save_top_k=-1)])
trainer.fit(module, datamodule=PretrainDataModule(seq_len=64, batch_size=4, num_workers=0), ckpt_path=ckpt)
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict  # noqa: E402

full = get_model_state_dict(module.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
if trainer.global_rank == 0:
    import torch

    torch.save(full, f"{root}/full_weights.pt")
# one write() per line: two ranks share the pipe, and print() may split a line into two writes that
# interleave with the other rank's (a write of < PIPE_BUF bytes to a pipe is atomic)
line = "RESULT " + json.dumps({"rank": trainer.global_rank, "losses": losses,
                               "param_type": type(module.model.embed.weight).__name__,
                               "val_loss": float(trainer.callback_metrics["val/loss"]), "dtypes": dtypes}) + "\n"
assert len(line.encode()) < 4096, "keep the result line under PIPE_BUF so the write stays atomic"
os.write(sys.stdout.fileno(), line.encode())
# gloo's threads sometimes abort the interpreter during teardown (SIGABRT after the last Python frame,
# ~1 run in 8 with torch 2.13 CPU); everything is printed and saved, so leave without the teardown
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
