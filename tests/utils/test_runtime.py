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


_FAULTING_ROUNDS = textwrap.dedent(
    """
    import resource, sys, torch
    from restore_rwkv import tune_cpu_allocator
    numel = int(sys.argv[1])
    exec(sys.argv[2])  # the allocator setting under test
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(8):  # glibc settles on a free block after some rounds (heap layout varies with imports)
        x = torch.ones(numel); del x
    rounds = []
    for _ in range(8):
        before = faults()
        x = torch.ones(numel); del x
        rounds.append(faults() - before)
    print(sum(r > numel * 4 // 4096 // 2 for r in rounds))
    """
)


def faulting_rounds(numel: int, setting: str = "") -> int:
    """In a fresh process: of 8 rounds of allocating and freeing ``numel`` floats, how many page-faulted
    the block in anew (rather than reusing pages), after ``setting`` (Python code) was run."""
    out = subprocess.run([sys.executable, "-c", _FAULTING_ROUNDS, str(numel), setting],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@glibc
def test_large_blocks_are_reused_after_tuning():
    # A 64 MB tensor freed and allocated again page-faults anew without the setting (glibc returns
    # it to the kernel) and reuses the same pages with it.
    tuned = (
        'assert tune_cpu_allocator()["mmap_threshold"] >= 64 << 20, tune_cpu_allocator()\n'
        'assert tune_cpu_allocator()["trim_threshold"] == 1 << 30\n'
        "assert tune_cpu_allocator() == tune_cpu_allocator()"
    )
    assert faulting_rounds(16 << 20) == 8  # every round maps fresh pages
    assert faulting_rounds(16 << 20, tuned) <= 2  # the same pages reused (glibc may move the block once or twice)


@glibc
def test_release_free_memory_returns_kept_pages():
    script = textwrap.dedent(
        """
        import os, torch
        from restore_rwkv import release_free_memory, tune_cpu_allocator
        tune_cpu_allocator()
        page = os.sysconf("SC_PAGE_SIZE")
        def rss():
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * page
        keep = torch.ones(1 << 16)          # something live below, so the heap cannot simply shrink
        x = torch.ones(16 << 20)            # 64 MB from the heap
        y = torch.ones(1 << 16)             # and something live above it
        del x
        before = rss()
        assert release_free_memory()
        print(before - rss())
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert int(out.stdout.split()[-1]) > 48 << 20


@glibc
def test_memory_preset_returns_mid_sized_blocks():
    # glibc's dynamic threshold keeps a freed 16 MB block in the heap after the first round; the
    # "memory" preset (fixed 4 MB threshold) maps and unmaps it every time, so RSS follows live data.
    memory = 'assert tune_cpu_allocator("memory") == {"mmap_threshold": 4 << 20}'
    assert faulting_rounds(4 << 20, memory) == 8 and faulting_rounds(4 << 20) <= 2
    with pytest.raises(ValueError, match="preference"):
        from restore_rwkv import tune_cpu_allocator

        tune_cpu_allocator("fastest")
