"""Child processes tied to this one: the servers a command starts (the temporary Prefect API, the FiftyOne App) must
not outlive a `kill -9` of the command, which runs no cleanup code.

`start_tied` starts a command through a launcher that asks the kernel to send it a signal when its parent dies
(Linux `PR_SET_PDEATHSIG`, which survives the exec into the command). The signal follows the *thread* that started
the child, so start it from the main thread. Elsewhere than Linux the launcher cannot ask, and the child outlives a
killed parent.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

STOP_TIMEOUT_S = 5.0
# argv: launcher, parent pid, signal, command...: die with the parent (PR_SET_PDEATHSIG = 1), unless it is already gone.
_LAUNCHER = (
    "import ctypes, os, sys\n"
    "if sys.platform.startswith('linux'):\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, int(sys.argv[2]))\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(1)\n"
    "os.execv(sys.argv[3], sys.argv[3:])\n"
)


def start_tied(
    command: Sequence[str], on_parent_death: signal.Signals = signal.SIGTERM, **popen: Any
) -> subprocess.Popen[bytes]:
    """Start `command` (its first item an absolute path) so that it receives `on_parent_death` when this process
    dies, however it dies; `popen`: subprocess.Popen's keyword arguments."""
    launcher = [sys.executable, "-c", _LAUNCHER, str(os.getpid()), str(int(on_parent_death))]
    return subprocess.Popen([*launcher, *command], **popen)


def stop(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT_S) -> None:
    """Stop a child (SIGTERM, then SIGKILL after `timeout` seconds) and reap it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
