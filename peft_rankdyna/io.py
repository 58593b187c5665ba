"""Crash-safe file writes: write to a temporary name in the same folder, then rename."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Callable


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` so that ``path`` is either the old file or the complete new one."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def replace_dir(source: str, destination: str) -> None:
    """Put the complete folder ``source`` at ``destination`` by renames, retiring any folder already there."""
    parent = os.path.dirname(os.path.abspath(destination))
    if not os.path.exists(destination):
        os.replace(source, destination)
        return
    retired = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(destination)}.old-")
    os.replace(destination, os.path.join(retired, "old"))
    os.replace(source, destination)
    shutil.rmtree(retired)


def atomic_write_dir(directory: str, write: Callable[[str], None]) -> None:
    """Run ``write(tmp_folder)`` then move the folder into place, so ``directory`` is never half-written."""
    directory = os.path.abspath(directory)
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(directory)}.tmp-")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        write(staging)
        replace_dir(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
