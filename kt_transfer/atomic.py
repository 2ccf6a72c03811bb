"""Writing files safely: atomically, with the user's permissions, and with a clear error
when the disk is full.

Readers see the old file or the new one, never half of one. Temporary files and folders
are made private by `tempfile` (0600 / 0700); what is renamed into place gets the mode a
plain `open(path, "w")` or `os.makedirs` would give under the process's umask, so other
accounts on a shared workdir can read results and serve exported models.
"""

import contextlib
import errno
import json
import os
import shutil
import tempfile

NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def umask():
    """The process's umask (read without changing it where /proc tells it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but brief)
    os.umask(mask)
    return mask


def plain_file_mode(path):
    """Gives a file made by mkstemp the mode a plain write would have given it."""
    os.chmod(path, 0o666 & ~umask())


def plain_dir_mode(path):
    """Gives a folder made by mkdtemp, and every folder and file in it, the modes plain
    os.makedirs / open would have given them."""
    mask = umask()
    os.chmod(path, 0o777 & ~mask)
    for root, dirs, files in os.walk(path):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)


def _write_replacing(path, write, binary=False, suffix=""):
    """Calls write(file) on a temporary sibling, gives it a plain file's mode, then
    renames it over `path`; the sibling is removed if anything fails."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
        plain_file_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_text(path, text):
    """Writes text to a temporary sibling, then renames it over `path`."""
    _write_replacing(path, lambda f: f.write(text))


def write_figure(fig, path, **savefig):
    """Saves a Matplotlib figure as PNG the same way (and closes the figure)."""
    import matplotlib.pyplot as plt  # only here: plotting is the analysis' business

    try:
        _write_replacing(
            path, lambda f: fig.savefig(f, format="png", **savefig), binary=True, suffix=".png"
        )
    finally:
        plt.close(fig)


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, sort_keys=True))


def read_json(path):
    """The JSON object stored at `path`, or None if there is no such file."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


class DiskFullError(RuntimeError):
    """There is no room left to write something kt_transfer needs to write. The message
    names the path, the space free and (where known) needed, and that a rerun continues."""


def is_no_space(error):
    """Whether an exception is the operating system's "no space left on device" (also when
    a library such as h5py reports it only in its message)."""
    if isinstance(error, OSError) and error.errno in NO_SPACE_ERRNOS:
        return True
    return "No space left on device" in str(error) or "Disk quota exceeded" in str(error)


def nearest_existing(path):
    """`path` made absolute, or its nearest parent that exists (what will hold it)."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def free_bytes(path):
    """Bytes free on the filesystem holding `path` (or its nearest existing parent)."""
    return shutil.disk_usage(nearest_existing(path)).free


def human_size(size):
    """1.5 GB, 20.3 MB, 64 KB."""
    for unit, scale in (("GB", 2**30), ("MB", 2**20)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size / 2**10:.0f} KB"


def disk_full(path, needed=None):
    """The DiskFullError for a write to `path` (needing about `needed` bytes, if known)."""
    free = free_bytes(path)
    need = f"about {human_size(needed)} needed, " if needed else ""
    return DiskFullError(
        f"no space left on the device writing {path} ({need}{human_size(free)} free); free "
        "some space and run the same command again: finished networks and the last backup "
        "are kept, and it continues from there"
    )


def check_space(path, needed):
    """Raises DiskFullError before a write of `needed` bytes that cannot fit (libraries
    such as h5py are left in a broken state by a write that fails half-way)."""
    if needed and free_bytes(path) < needed:
        raise disk_full(path, needed)


@contextlib.contextmanager
def reporting_full_disk(path, needed=None):
    """Turns a "no space left" error raised inside into a DiskFullError naming `path`."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as e:
        if is_no_space(e):
            raise disk_full(path, needed) from e
        raise
