"""realnet.allocator: freed memory is reused instead of being faulted in again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from realnet import allocator

# Ten 8 MB buffers (the size of a fit step's larger tensors) made, written and freed per cycle, by
# malloc itself so that no small allocation lands between them: under glibc's defaults they are
# mapped afresh, or trimmed from the heap's top, every cycle.
FAULT_PROBE = textwrap.dedent("""
    import ctypes, json, resource
    from realnet.allocator import keep_freed_memory

    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    libc.memset.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t)
    SIZE = 8 * 2**20

    def page_faults(cycles=10, buffers=10):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(cycles):
            held = [libc.malloc(SIZE) for _ in range(buffers)]
            for address in held:
                libc.memset(address, 1, SIZE)
            for address in reversed(held):
                libc.free(address)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    page_faults(1)
    default = page_faults()
    applied = keep_freed_memory()
    page_faults(1)
    print(json.dumps({"default": default, "kept": page_faults(), "applied": applied}))
""")


def run_probe(env_changes: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    env.update(env_changes)
    result = subprocess.run([sys.executable, "-c", FAULT_PROBE], env=env, capture_output=True, text=True,
                            check=True, timeout=120)
    return json.loads(result.stdout)


glibc_only = pytest.mark.skipif(allocator.glibc_library() is None, reason="glibc's mallopt is needed (Linux with glibc)")


@glibc_only
def test_freed_memory_is_reused_without_page_faults():
    probe = run_probe({})
    assert probe["applied"] == ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"]
    pages_written = 10 * 10 * 2048
    assert probe["default"] > pages_written // 2  # the probe does fault under the defaults
    assert probe["kept"] < pages_written // 100


@glibc_only
def test_a_threshold_the_user_set_is_left_alone():
    probe = run_probe({"MALLOC_TRIM_THRESHOLD_": "0", "GLIBC_TUNABLES": "glibc.malloc.top_pad=0"})
    assert probe["applied"] == ["MALLOC_MMAP_THRESHOLD_"]
    assert probe["kept"] * 10 > probe["default"]  # trimming every time, as the user asked


def test_nothing_is_changed_off_linux(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert allocator.keep_freed_memory({}) == []


def test_the_cli_applies_it_before_running_a_command(monkeypatch):
    from realnet.cli import main as cli_main

    calls = []
    monkeypatch.setattr(cli_main, "keep_freed_memory", lambda: calls.append("kept"))
    with pytest.raises(SystemExit):
        cli_main.main(["--version"])
    assert calls == []  # --version exits while parsing
    assert cli_main.main(["data", "check", "--data", "/nonexistent-realnet-root", "--category", "x"]) == 2
    assert calls == ["kept"]
