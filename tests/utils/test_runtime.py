"""The allocator setting: takes effect on glibc, and a freed large block is then reused."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only"
)


@glibc
def test_large_blocks_are_reused_after_tuning():
    # In a fresh process: a 64 MB tensor freed and allocated again page-faults anew without the
    # setting (glibc returns it to the kernel) and reuses the same pages with it.
    script = textwrap.dedent(
        """
        import resource, sys, torch
        from restore_rwkv import tune_cpu_allocator
        if sys.argv[1] == "tuned":
            assert tune_cpu_allocator()["mmap_threshold"] >= 64 << 20, tune_cpu_allocator()
            assert tune_cpu_allocator() == tune_cpu_allocator()
        def faults():
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(3):  # glibc settles on a free block after a couple of rounds
            x = torch.ones(16 << 20); del x
        before = faults()
        for _ in range(5):
            x = torch.ones(16 << 20); del x
        print(faults() - before)
        """
    )
    counts = {}
    for mode in ("default", "tuned"):
        out = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, check=True)
        counts[mode] = int(out.stdout.split()[-1])
    pages = 5 * (64 << 20) // 4096
    assert counts["default"] > pages // 2  # fresh pages every time
    assert counts["tuned"] < pages // 20  # the same pages reused
