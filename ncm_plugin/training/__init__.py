"""The training machinery: the registered pipeline and what only it needs
(samplers, batcher, checkpoints, distributed training, interrupts, mixed
precision, pipeline options)."""
