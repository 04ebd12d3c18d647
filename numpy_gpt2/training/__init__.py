"""Training: the optimizer, one step, data, and the training loop.

- optim: AdamW (torch.optim.AdamW's math), gradient clipping, nanoGPT's learning-rate schedule.
- step: train_step (gradient accumulation, clipping, AdamW), evaluate (the eval loss),
  the training state files.
- data: text to token ids; train/val splits; batches.
- distributed (MPI data parallel), mfu (model FLOPs utilisation). (Dropout is part of the
  model's equations: numpy_gpt2/dropout.py.)
"""
