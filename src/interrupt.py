"""Ctrl-C (SIGINT) and SIGTERM during training: finish the current step, save, exit 130.

A KeyboardInterrupt raised at an arbitrary point (inside graph compilation, a data-pipeline
worker or a checkpoint write) either aborts the process or leaves it hanging in MindSpore's
teardown. Instead the first signal only sets a flag; the training loop looks at it after every
step, writes a checkpoint and raises ``Interrupted``, which the entry script turns into one line
and exit code 130. A second signal aborts at once (nothing half-written: checkpoints are written
to a temporary name and renamed).
"""
import os
import signal
import sys
import time

EXIT_CODE = 130
SAME_REQUEST_SECONDS = 2.0


class Interrupted(Exception):
    """Training stopped on a signal; the message is the one line the user sees."""


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag the training loop polls."""

    def __init__(self):
        self.signal_name = None
        self.first_at = 0.0

    def install(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame):
        now = time.monotonic()
        if self.signal_name is not None:
            # Ctrl-C reaches every process of the terminal's group, and MindSpore's data workers
            # pass it on as SIGTERM: signals within a moment of the first are the same request.
            if now - self.first_at < SAME_REQUEST_SECONDS:
                return
            sys.stderr.write(f"{signal.Signals(signum).name} again: aborting now\n")
            sys.stderr.flush()
            os._exit(EXIT_CODE)
        self.signal_name = signal.Signals(signum).name
        self.first_at = now
        print(f"{self.signal_name}: stopping after the current step (send it again to abort now)",
              flush=True)

    @property
    def requested(self):
        return self.signal_name is not None

    def check(self, where):
        """Raise Interrupted if a stop was requested; ``where`` completes 'interrupted ...'."""
        if self.requested:
            raise Interrupted(f"interrupted {where}")
