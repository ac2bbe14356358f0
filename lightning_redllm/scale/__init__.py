"""Scaling out: what a run needs beyond one process.

* ``plan``      the per-GPU memory planner (``python -m lightning_redllm plan``): ZeRO-3 / FSDP / DDP
  model states, activations and buffers, the largest micro-batch that fits
* ``measure``   what autograd really saves in a forward: the planner's activation model, checked
* ``parallel``  FSDP2 sharding of the models, one unit per block, and activation checkpointing
* ``watchdog``  per-rank heartbeats: a dead rank ends the job with a line naming it, never a silent hang
"""
