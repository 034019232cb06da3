"""A process that trains on CPU keeps the memory it frees: no page faults for a reallocated tensor."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import cli_env

# In a process of its own: the first measurement needs glibc's defaults, which stages run in the test runner's
# process have changed there already.
PROGRAM = """
import json, resource, torch
from alignloop.train import distributed, host_memory

def faults():
    largest = torch.ones(16 << 20)  # 64 MiB, filled: every page touched
    del largest
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    tensor = torch.ones(12 << 20)  # 48 MiB: fits where the largest was
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

plain = faults()
device = distributed.start("cpu")
print(json.dumps({"device": str(device), "kept": host_memory.keep_freed_memory(), "plain": plain,
                  "kept_faults": faults()}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_cpu_training_process_reuses_freed_memory_without_page_faults():
    result = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, env=cli_env(),
                            timeout=120)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["device"] == "cpu" and found["kept"] is True
    # Before: the 48 MiB tensor is mapped afresh and faulted in page by page (12,288 pages of 4 KiB each, or 24
    # of 2 MiB where the kernel gives huge pages); after, it reuses the pages the 64 MiB one left.
    assert found["plain"] >= 24, found
    assert found["kept_faults"] * 10 <= found["plain"], found
