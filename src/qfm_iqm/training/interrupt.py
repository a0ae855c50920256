"""Graceful stops: SIGTERM/SIGINT become a request to save and stop at the next step boundary."""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving its state; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class StopRequest:
    """While active, the first SIGTERM or SIGINT is recorded in ``signum`` instead of ending the process;
    a second SIGINT (Ctrl-C pressed twice) raises ``KeyboardInterrupt`` at once. Other repeats are
    ignored: ``torchrun`` answers Ctrl-C by sending SIGTERM to processes that already got the SIGINT.
    Handlers are only installed in the main thread and the previous ones are restored on exit."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
        elif signum == self.signum == signal.SIGINT:
            raise KeyboardInterrupt

    def __enter__(self) -> "StopRequest":
        self.signum = None
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
