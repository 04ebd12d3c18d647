"""Training: the optimizer, one step, data, and the training loop.

- optim: AdamW (torch.optim.AdamW's math), gradient clipping, nanoGPT's learning-rate schedule.
- step: train_step (gradient accumulation, clipping, AdamW), evaluate (the eval loss).
- data: text to token ids; train/val splits; batches.
- settings: TrainSettings, a run's settings (nanoGPT's names), checked; the resume rules.
- run: Run, a run in memory (typed), open_run; RunDirectory, its directory (lock, recovery).
- state: the run's files (train_state.json, optimizer, metrics, RNG, best/), saved as one commit.
- loop: train(settings, out), the training loop as nanoGPT's recipe; train_run(run).
- plot (the loss curve), memory (how much memory training or generation needs).
- distributed (MPI data parallel), mfu (model FLOPs utilisation). (Dropout is part of the
  model's equations: numpy_gpt2/dropout.py.)
"""
