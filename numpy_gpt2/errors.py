"""The one exception type for a checkpoint or config that cannot be used as given."""


class CheckpointError(ValueError):
    """A checkpoint file, its keys, shapes, dtypes or its config are not what GPT-2 needs.

    The message names the file and the offending key, shape or dtype, and what was expected.
    """
