from jaxlm.errors import UserError


class CheckpointError(UserError):
    """A checkpoint that cannot be loaded as asked; the message names the file and tensor at fault."""
