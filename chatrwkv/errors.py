"""Errors that reach the user as one clear line."""


class ChatRWKVError(Exception):
    """Base class: the message is a complete, user-facing sentence."""


class CheckpointError(ChatRWKVError):
    """A checkpoint file that cannot be read or is not a known RWKV layout."""


class StateFileError(ChatRWKVError):
    """A state / session file that cannot be read or belongs to another model."""


class TokenizerError(ChatRWKVError):
    """A tokenizer that cannot be loaded or does not fit the model."""


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (or its type name), for one-line user errors."""
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:limit]
