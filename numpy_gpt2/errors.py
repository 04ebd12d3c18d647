"""The exception types: a checkpoint or config that cannot be used as given, and non-finite numbers."""


class CheckpointError(ValueError):
    """A checkpoint file, its keys, shapes, dtypes or its config are not what GPT-2 needs.

    The message names the file and the offending key, shape or dtype, and what was expected.
    """


class NonFiniteError(ValueError):
    """The logits (or the loss) hold NaN or infinity.

    The message names the first named activation, in forward order (wte, wpe, h.0.ln_1,
    h.0.attn.c_attn, ...; see numpy_gpt2.activations), where a non-finite value appeared, the
    sequence and position there, and any weights that are not finite. A ValueError, so the
    scripts report it in one line and exit with status 2.
    """
