class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as asked; the message names the file and tensor at fault."""
