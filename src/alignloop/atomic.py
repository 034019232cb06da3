"""Crash-safe writes: a file or directory is either the old version or the new one, never half.

Files go through a temporary sibling and `os.replace`; directories are built
under a temporary name and swapped in with renames, so a `kill -9` at any
moment leaves the previous complete version in place.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alignloop.errors import disk_full_error, is_disk_full


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def write_text(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        full = is_disk_full(exc, str(path.parent))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if full:
            raise disk_full_error(path) from exc
        raise


def write_json(path: Path, data: Any) -> None:
    """Write `data` as indented JSON, atomically."""
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces `target` whole.

    If the block raises, or the process dies, `target` keeps its previous
    contents and the temporary directory is left behind under a name starting
    with `.tmp-`, which `clean_stale_temporaries` removes.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700
    try:
        yield tmp
    except BaseException as exc:
        full = is_disk_full(exc, str(tmp))  # asked before the cleanup frees the space again
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise disk_full_error(target) from exc
        raise
    old = target.parent / f".old-{target.name}-{os.getpid()}"
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def clean_stale_temporaries(folder: Path) -> None:
    """Remove half-written `.tmp-*` directories left by a crash, and restore an orphaned `.old-*`."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if entry.name.startswith(".tmp-") and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.name.startswith(".old-") and entry.is_dir():
            # A crash between the two renames: the old copy is the only complete one.
            name = entry.name[len(".old-"):].rsplit("-", 1)[0]
            live = folder / name
            if live.exists():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                os.replace(entry, live)
