"""Ctrl-C (SIGINT) and SIGTERM: finish the current step, save, exit 130.

A KeyboardInterrupt raised at an arbitrary point (inside ``import mindspore``, graph compilation,
a data-pipeline worker or a checkpoint write) either aborts the process with a traceback or leaves
it hanging in MindSpore's teardown. Instead every entry script starts with ``STOP.install()``: a
signal only sets a flag. The training loop looks at it after every step, writes a checkpoint and
raises ``Interrupted``, which the entry script turns into one line and exit code 130; eval.py and
export.py look at it once their imports are done and then hand Ctrl-C back to Python
(``STOP.restore_default``). A second signal aborts at once (nothing half-written: outputs are
written to a temporary name and renamed).
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
        print("stop requested: finishing the current step (send the signal again to abort now)",
              flush=True)

    @property
    def requested(self):
        return self.signal_name is not None

    def check(self, where):
        """Raise Interrupted if a stop was requested; ``where`` completes 'interrupted ...'."""
        if self.requested:
            raise Interrupted(f"interrupted {where}")

    def restore_default(self, where="during start-up"):
        """For short commands: after the imports, Ctrl-C (or the SIGTERM MindSpore's data workers
        relay) raises KeyboardInterrupt, once, so the command ends with one line and exit 130."""
        self.check(where)
        raised = []

        def interrupt(_signum, _frame):
            if not raised:
                raised.append(True)
                raise KeyboardInterrupt
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, interrupt)


# One per process: the entry scripts install it first thing (src/cli.py), the trainer polls it.
STOP = StopRequest()
