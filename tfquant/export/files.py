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


def pyplot(needed_by):
    """matplotlib.pyplot with the off-screen backend; an ImportError that says how to get
    it and that `needed_by` (a phrase: what wanted the plot) needs it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(f"{needed_by} needs matplotlib: `pip install matplotlib` (or "
                          "`pip install tfquant[plot]`).") from None
    return plt


def save_figure(figure, path):
    """Writes a matplotlib figure as PNG to `path` (whole or not at all) and closes it."""
    plt = pyplot("saving a figure")
    try:
        figure.tight_layout()
        with replaced_atomically(path) as temporary:
            figure.savefig(temporary, dpi=100, format="png")
    finally:
        plt.close(figure)
