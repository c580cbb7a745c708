"""Files written whole or not at all."""

import contextlib
import os
import tempfile


@contextlib.contextmanager
def replaced_atomically(path):
    """Yields a temporary path beside `path` (same suffix); when the block ends without an
    error it replaces `path`, else it is removed and `path` keeps what it held."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".tfquant-",
                                         suffix=os.path.splitext(path)[1])
    os.close(handle)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def atomic_write(path, data):
    """Writes `data` (bytes or str) to `path` through a temporary file and a rename."""
    with replaced_atomically(path) as temporary:
        with open(temporary, "wb" if isinstance(data, bytes) else "w") as handle:
            handle.write(data)
