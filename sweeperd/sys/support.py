"""Is this a platform sweeperd runs on?  Importable anywhere (no Linux-only names at import),
so ``sweeperd run`` can ask before it imports the modules that need Linux (``sysmem``'s
``MADV_REMOVE``, ``shm``'s memfds) and name what is missing instead of an AttributeError."""

from __future__ import annotations

import os
import sys


class UnsupportedPlatform(RuntimeError):
    pass


def check_platform(platform: str | None = None, has_memfd: bool | None = None) -> None:
    """sweeperd releases memory with Linux's madvise; elsewhere say exactly what is missing.
    The facts default to this process's (``sys.platform``, ``os.memfd_create``); tests pass
    others.  Raises :class:`UnsupportedPlatform` (``sweeperd run`` exits 7)."""
    platform = sys.platform if platform is None else platform
    has_memfd = hasattr(os, "memfd_create") if has_memfd is None else has_memfd
    if not platform.startswith("linux"):
        raise UnsupportedPlatform(
            f"sweeperd needs Linux (madvise MADV_REMOVE/MADV_FREE on memfd mappings); this is "
            f"{platform}. On Windows the equivalent would be VirtualFree(MEM_DECOMMIT) / "
            "VirtualAlloc(MEM_COMMIT), which sweeperd does not implement.")
    if not has_memfd:
        raise UnsupportedPlatform("os.memfd_create is missing: Linux 3.17+ and glibc 2.27+")
