"""The loss curve of a training run (loss_curve.png): the training loss per step and the
evaluated train and val losses, drawn from metrics.jsonl's records with matplotlib, an
optional extra (`pip install 'numpy_gpt2[plot]'`): without it there is no plot and training
goes on. Saving the file with the rest of the run is state.py's.
"""

from __future__ import annotations


def no_plot_reason() -> str:
    """Why loss_curve_writer returned None: matplotlib not installed, or (under a memory
    limit, say) installed but unable to load."""
    error = _import_error[0]
    if error is None or isinstance(error, ModuleNotFoundError):
        return "matplotlib is not installed"
    from numpy_gpt2.errors import describe
    return f"matplotlib could not be loaded ({describe(error)})"


_import_error = [None]  # the ImportError of the last attempt, for no_plot_reason


def loss_curve_writer(metrics):
    """write(path) drawing loss_curve.png: training loss per step and the evaluated train/val
    losses; None when matplotlib is not installed or cannot load (no_plot_reason says which)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        _import_error[0] = e
        return None
    train = [(m["step"], m["loss"]) for m in metrics if m["kind"] == "train"]
    evals = [m for m in metrics if m["kind"] == "eval"]

    def write(path):
        fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
        try:
            if train:
                steps, losses = zip(*train)
                ax.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=0.8, label="train (batch)")
            if evals:
                ax.plot([m["step"] for m in evals], [m["train_loss"] for m in evals], "o-",
                        color="tab:blue", markersize=3, label="train (eval)")
                ax.plot([m["step"] for m in evals], [m["val_loss"] for m in evals], "o-",
                        color="tab:orange", markersize=3, label="val (eval)")
            ax.set_xlabel("step")
            ax.set_ylabel("cross-entropy (nats/token)")
            ax.grid(alpha=0.3)
            if train or evals:
                ax.legend()
            fig.subplots_adjust(left=0.11, right=0.98, bottom=0.13, top=0.97)  # tight_layout: 1.5x slower
            fig.savefig(path, format="png")
        finally:
            plt.close(fig)
    return write
