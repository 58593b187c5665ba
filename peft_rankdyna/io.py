"""What goes to disk: crash-safe writes (a temporary name, then a rename), and portable command lines."""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from typing import Callable, Optional


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


def portable_command(argv: Sequence[str], variables: Optional[Mapping[str, str]] = None) -> str:
    """A command line to record beside results, without the paths of the machine it ran on.

    An argument that is one of ``variables``' paths, or lies under one, becomes its variable
    (``$MODEL``, ``$MODEL/sub``); by default ``$MODEL`` and ``$GLUE_DIR`` stand for those environment
    variables' values when set. Other absolute paths under the current directory become relative.
    """
    variables = dict(variables or {})
    for name in ("MODEL", "GLUE_DIR"):
        if os.environ.get(name):
            variables.setdefault(os.environ[name], f"${name}")
    roots = sorted(((os.path.abspath(path).rstrip(os.sep), name) for path, name in variables.items() if path),
                   key=lambda item: -len(item[0]))
    here = os.getcwd()

    def portable(arg: str) -> str:
        if not os.path.isabs(arg):
            return shlex.quote(arg)
        path = os.path.normpath(arg)
        for root, name in roots:
            if path == root or path.startswith(root + os.sep):
                return name + path[len(root):]
        return shlex.quote(os.path.relpath(path, here) if path.startswith(here + os.sep) else path)

    return " ".join(portable(arg) for arg in argv)
