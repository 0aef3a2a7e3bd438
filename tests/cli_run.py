"""`compress1img ARGS` run as a user runs it, in a fresh process: the one way the tests start the command."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

# One thread per run where a test asks for it: the arithmetic is the same, and a 2-core machine shared
# with other work does not thrash (two OpenMP threads on one free core made healing 40x slower).
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    peak_mb: float  # the process's peak resident memory


def run_cli(*args, cwd: Path | None = None, timeout: float = 600, env: dict | None = None) -> Result:
    """`python -m compress1img ARGS`; killed after `timeout` seconds."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-m", "compress1img", *map(str, args)], stdout=out, stderr=err,
                                cwd=cwd, env=env)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)  # wait4, not wait: it also gives the peak memory
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Result(proc.returncode, out.read().decode(), err.read().decode(), usage.ru_maxrss / 1024)
