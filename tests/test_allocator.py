"""shiftsim.allocator: tensor-sized blocks come from malloc's heap and stay there for reuse
(glibc), unless SHIFTSIM_ALLOCATOR=system. Each case runs in a fresh interpreter: the
settings are per process and cannot be undone."""

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="the settings are glibc's")

# a 16 MiB malloc and free, with glibc's own counters of mmapped and free heap bytes
PROBE = """
import ctypes, json, shiftsim.allocator as a
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 16 << 20
before = libc.mallinfo2()
block = libc.malloc(size)
during = libc.mallinfo2()
libc.free(block)
after = libc.mallinfo2()
print(json.dumps({"applied": a.keep_freed_memory(), "mmapped": during.hblkhd - before.hblkhd,
                  "kept_free": after.fordblks - before.fordblks}))
"""


def _probe(**env):
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         env={**os.environ, **env}, check=True)
    return out.stderr, json.loads(out.stdout.strip().splitlines()[-1])


def test_import_shiftsim_keeps_16_mib_blocks_on_the_heap_and_their_memory_after_free():
    _, tuned = _probe(SHIFTSIM_ALLOCATOR="shiftsim")
    assert tuned == {"applied": True, "mmapped": 0, "kept_free": tuned["kept_free"]}
    assert tuned["kept_free"] >= 16 << 20  # freed, and kept for the next step


def test_system_leaves_glibc_as_it_is():
    _, plain = _probe(SHIFTSIM_ALLOCATOR="system")
    assert plain["applied"] is False
    assert plain["mmapped"] >= 16 << 20  # glibc's default: a fresh mmap for a 16 MiB block
    assert plain["kept_free"] < 16 << 20  # ... handed back on free


def test_an_unknown_choice_warns_in_one_line_and_applies_the_default():
    err, tuned = _probe(SHIFTSIM_ALLOCATOR="jemalloc")
    assert tuned["applied"] is True and tuned["mmapped"] == 0
    assert "SHIFTSIM_ALLOCATOR='jemalloc' is not one of 'shiftsim'" in err
