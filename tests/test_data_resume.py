"""Exact resume through Lightning checkpoints, and per-rank states under (gloo) DDP."""
import multiprocessing as mp
import os
import socket
import warnings

import lightning as L
import pytest
import torch

from lightning_redllm.data import DataStatsLogger, PretrainDataModule, PretrainDataset, ResumableDataLoader
from lightning_redllm.data.synthetic import random_documents, write_pretrain_shards

SEQ = 8


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    write_pretrain_shards(root, random_documents(120, max_len=20, seed=3), docs_per_shard=30)
    return str(root)


class Recorder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch["tokens"].clone())
        return self.layer(batch["tokens"][:, :1].float()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


class SaveAt(L.Callback):
    def __init__(self, step, path):
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)


def _fit(shards, tmp_path, num_workers, ckpt=None, callbacks=(), **trainer_kw):
    dm = PretrainDataModule(shards, seq_len=SEQ, batch_size=2, num_workers=num_workers, shuffle_buffer=6, seed=9)
    trainer = L.Trainer(
        logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        default_root_dir=str(tmp_path), callbacks=list(callbacks), **trainer_kw,
    )
    model = Recorder()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt)
    return trainer, model.seen


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_lightning_checkpoint_resume_is_exact(shards, tmp_path, num_workers):
    """Killed after step 3 and resumed == never stopped (Lightning prefetches a batch: must not skip it)."""
    _, full = _fit(shards, tmp_path, num_workers, max_steps=7)
    ckpt = str(tmp_path / "step3.ckpt")
    _fit(shards, tmp_path, num_workers, callbacks=[SaveAt(3, ckpt)], max_steps=5)
    _, resumed = _fit(shards, tmp_path, num_workers, ckpt=ckpt, max_steps=7)
    assert _same(resumed, full[3:])
    if num_workers == 0:  # trainer.save_checkpoint() after fit() returned
        trainer, _ = _fit(shards, tmp_path, num_workers, max_steps=4)
        trainer.save_checkpoint(str(tmp_path / "end.ckpt"))
        _, resumed = _fit(shards, tmp_path, num_workers, ckpt=str(tmp_path / "end.ckpt"), max_steps=7)
        assert _same(resumed, full[4:])


def test_limited_epochs_continue_the_stream(shards, tmp_path):
    """Epochs cut by limit_train_batches (and rebuilt loaders) continue the infinite stream."""
    _, full = _fit(shards, tmp_path, 0, max_steps=6)
    _, epochs = _fit(shards, tmp_path, 0, max_epochs=2, limit_train_batches=3)
    assert _same(epochs, full)
    trainer, epochs = _fit(shards, tmp_path, 0, max_epochs=2, limit_train_batches=3,
                           reload_dataloaders_every_n_epochs=1, callbacks=[DataStatsLogger(every_n_steps=1)])
    assert _same(epochs, full)
    assert trainer.callback_metrics["data/tokens"].item() == 6 * 2 * SEQ


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, port, shards, path, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        def make():
            return ResumableDataLoader(PretrainDataset(shards, seq_len=SEQ, shuffle_buffer=4, seed=1),
                                       batch_size=2, num_workers=0)

        full = [b["tokens"] for _, b in zip(range(12), make())]
        loader = make()
        it = iter(loader)
        head = [next(it)["tokens"] for _ in range(5)]
        state = loader.state_dict()  # collective: every rank's position
        if rank == 0:
            torch.save(state, path)  # only rank 0 writes, as in Lightning
        torch.distributed.barrier()
        resumed = make()
        resumed.load_state_dict(torch.load(path, weights_only=True))
        tail = [b["tokens"] for _, b in zip(range(7), resumed)]
        out.put((rank, _same(head + tail, full), torch.cat(full).sum().item()))
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_every_rank_resumes_its_own_position(shards, tmp_path):
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_ddp_worker, args=(r, port, shards, str(tmp_path / "s.pt"), out)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    assert [ok for _, ok, _ in results] == [True, True]
    assert results[0][2] != results[1][2]  # the ranks read different data
