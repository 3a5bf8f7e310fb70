"""Run one command; write its exit code, wall seconds and peak RSS as JSON.

    python bench/_measure.py RESULT.json LOG -- COMMAND...

Linux carries a process's peak RSS across fork and exec, so a child started straight from
bench/compare.py (which holds models and evaluation data by then) reports compare.py's size when
its own is smaller. Started from this small process instead, the command's peak is its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    result, log, separator, *command = sys.argv[1:]
    assert separator == "--" and command, __doc__
    with Path(log).open("wb") as sink:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
    document = {
        "exit_code": os.waitstatus_to_exitcode(status),
        "seconds": seconds,
        "peak_rss_mb": usage.ru_maxrss / 1024,  # Linux reports KiB
    }
    Path(result).write_text(json.dumps(document))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
