"""flaxgen/hostmem.py: glibc's malloc keeps freed memory, so that reused buffers stop faulting."""
import os
import subprocess
import sys
import textwrap

import pytest

from flaxgen import hostmem

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc on Linux")

# Allocate, touch and free a large and a half-size buffer, the way a step's temporaries come and
# go, and count the page faults of ten more rounds after the first.
FAULTS_PER_ROUND = textwrap.dedent("""
    import ctypes, resource, sys
    from flaxgen import hostmem
    said = hostmem.keep_freed_memory() if sys.argv[1] == "keep" else "untouched"
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes, libc.memset.argtypes = [ctypes.c_void_p], [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    size = 24 << 20

    def one_round():
        big = libc.malloc(size); libc.memset(big, 1, size)
        half = libc.malloc(size // 2); libc.memset(half, 1, size // 2)
        libc.free(big); libc.free(half)

    one_round()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        one_round()
    print(said, "|", (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
""")


def _faults_per_round(mode: str, **env) -> tuple[str, float]:
    clean = {k: v for k, v in os.environ.items() if k not in hostmem.ENVIRONMENT}
    out = subprocess.run([sys.executable, "-c", FAULTS_PER_ROUND, mode], env={**clean, **env},
                         capture_output=True, text=True, check=True).stdout
    said, faults = out.rsplit("|", 1)
    return said.strip(), float(faults)


def test_kept_memory_is_reused_without_page_faults_where_glibc_alone_faults():
    said, faults = _faults_per_round("keep")
    assert said.startswith("keeps freed memory") and faults < 50
    # glibc's own thresholds trim the heap's top and fault it back in every round
    assert _faults_per_round("untouched")[1] > 500


def test_a_malloc_setting_in_the_environment_wins():
    said, faults = _faults_per_round("keep", MALLOC_TRIM_THRESHOLD_="0")
    assert said == "left to the environment's MALLOC_ settings"
    assert faults > 500       # trim at once, as asked: nothing was overridden


def test_the_peers_start_with_the_settings_our_process_takes():
    from flaxgen import bench

    assert bench.PEER_MALLOC_ENV == {"MALLOC_MMAP_THRESHOLD_": str(hostmem.MMAP_THRESHOLD),
                                     "MALLOC_TRIM_THRESHOLD_": str(hostmem.TRIM_THRESHOLD)}
