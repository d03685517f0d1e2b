"""Run a stage in a fresh Python interpreter, its output streamed into the caller's log.

The Airflow task process is a fork of the task supervisor; training in it ran slower
than the same stage alone (bench/train.py --in-platform). A child started with exec
carries none of the parent's state: it reads its Settings from the same environment,
writes its result as JSON to a file, and dies with its parent.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
from collections import deque
from pathlib import Path

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: SIGKILL when the parent (the Airflow task) dies, so a killed task leaves no trainer."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (AttributeError, OSError):  # not Linux: the finally in run_stage still stops the child
        pass


def run_stage(module: str, args: list[str]) -> dict:
    """`python -m module *args --result-file F`: every output line logged here, F's JSON returned."""
    with tempfile.TemporaryDirectory(prefix="visionloop-stage-") as tmp:
        result_file = Path(tmp) / "result.json"
        command = [sys.executable, "-u", "-m", module, *args, "--result-file", str(result_file)]
        log.info("running %s in a fresh process: %s", module, " ".join(command[3:]))
        tail: deque[str] = deque(maxlen=30)
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   bufsize=1, preexec_fn=_die_with_parent)
        try:
            for line in process.stdout:
                line = line.rstrip()
                tail.append(line)
                log.info("%s", line)
            code = process.wait()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        if code != 0 or not result_file.is_file():
            raise RuntimeError(f"{module} failed (exit code {code}); its last output:\n" + "\n".join(tail))
        return json.loads(result_file.read_text())
