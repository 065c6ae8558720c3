"""Paddle 2.6 and zlib: why ppim loads zlib first, and a clear error where that came too late.

Paddle 2.6's libpaddle.so defines its own zlib 1.2.8 functions and also needs the system
libz.so.1. If libz.so.1 is first loaded together with libpaddle (``import paddle`` before anything
loaded zlib), the dynamic linker binds libz's internal calls (inflateInit2_ -> inflateReset2, ...)
to libpaddle's copies, whose state layout differs: the first inflate in the process
(zlib.decompress, gzip, requests' gzip answers, numpy.random's import) is killed by SIGSEGV in
inflateReset2. Loading libz before libpaddle binds it to itself. ppim does that in three ways:
``import ppim`` imports zlib before Paddle; an installed ppim adds ppim-zlib.pth, which imports
zlib when the interpreter starts (so ``import paddle`` first is safe too); and a process where it
is already too late is told so by :func:`check_zlib_order` at ``import ppim`` instead of crashing
later. Paddle 3 does not export zlib and is not affected.
"""
from __future__ import annotations

import ctypes
import os
import sys
from typing import List

__all__ = ["STARTUP_PTH", "STARTUP_LINE", "check_zlib_order", "loaded_libraries"]

#: The file an installed ppim puts in site-packages, and its one line (setup.py reads both here).
STARTUP_PTH = "ppim-zlib.pth"
STARTUP_LINE = "import zlib  # ppim: load libz before Paddle 2.6's libpaddle.so (see ppim/_zlib.py)"


class _DlPhdrInfo(ctypes.Structure):
    _fields_ = [("dlpi_addr", ctypes.c_void_p), ("dlpi_name", ctypes.c_char_p)]  # leading fields only


def loaded_libraries() -> List[str]:
    """Paths of the shared objects in this process, in the order they were loaded (Linux/glibc)."""
    names: List[str] = []
    callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(_DlPhdrInfo), ctypes.c_size_t, ctypes.c_void_p)

    def collect(info, size, data):
        names.append(os.fsdecode(info.contents.dlpi_name or b""))
        return 0

    libc = ctypes.CDLL(None)
    libc.dl_iterate_phdr(callback_type(collect), None)
    return names


def _libz_bound_to_paddle() -> bool:
    """True if libz.so.1 came into the process after a libpaddle.so that defines zlib itself."""
    names = loaded_libraries()
    paddle = next((i for i, n in enumerate(names) if os.path.basename(n) == "libpaddle.so"), None)
    libz = next((i for i, n in enumerate(names) if os.path.basename(n).startswith("libz.so")), None)
    if paddle is None or libz is None or libz < paddle:
        return False
    own = ctypes.CDLL(names[libz])
    try:
        # dlsym through libpaddle's handle finds libpaddle's own definition first, if it has one.
        theirs = ctypes.cast(ctypes.CDLL(names[paddle]).inflateReset2, ctypes.c_void_p).value
    except AttributeError:
        return False
    return theirs != ctypes.cast(own.inflateReset2, ctypes.c_void_p).value


def check_zlib_order() -> None:
    """Raise ImportError, saying what to do, if zlib can no longer be used safely in this process
    (Paddle 2.6 imported before zlib was ever loaded, without ppim's startup line installed)."""
    if not sys.platform.startswith("linux") or "paddle" not in sys.modules:
        return
    try:
        broken = _libz_bound_to_paddle()
    except (OSError, AttributeError, ValueError):  # not glibc: the problem does not arise there
        return
    if broken:
        raise ImportError(
            "Paddle 2.6 was imported before zlib was loaded, so zlib in this process is bound to "
            "libpaddle's incompatible copy and the next decompression (zlib, gzip, numpy.random, "
            "export) would crash with SIGSEGV. Import ppim (or zlib) before paddle, install ppim with "
            "pip (it adds a startup line that loads zlib first), or run with "
            "LD_PRELOAD=libz.so.1.")
