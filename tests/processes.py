"""Child processes that tests interrupt as a terminal would (a signal to the whole process group)."""
import contextlib
import os
import signal
import subprocess
import time


@contextlib.contextmanager
def process_group(command, **popen):
    """``command`` started in its own process group (so a signal reaches its workers too). If the
    block leaves it running (a failed assertion, a timeout), the whole group is SIGKILLed and reaped."""
    proc = subprocess.Popen(command, start_new_session=True, **popen)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def interrupt(proc, wait: float = 1.0, timeout: float = 60):
    """Ctrl-C after ``wait`` seconds: SIGINT to ``proc``'s process group; returns its (stdout, stderr)."""
    time.sleep(wait)
    os.killpg(proc.pid, signal.SIGINT)
    return proc.communicate(timeout=timeout)
