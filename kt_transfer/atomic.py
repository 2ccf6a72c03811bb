"""Atomic file writes: readers see the old file or the new one, never half of one."""

import json
import os
import tempfile


def write_text(path, text):
    """Writes text to a temporary sibling, then renames it over `path`."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, sort_keys=True))


def read_json(path):
    """The JSON object stored at `path`, or None if there is no such file."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)
