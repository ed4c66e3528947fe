"""Keeping an NNI experiment of the training-service engine honest: it ends, or it says why it cannot.

NNI 3.0's strategy runs in the search's main thread and waits for the trials' events over one websocket
channel to its manager (a Node.js process). Three things there turn a failure into a search that waits
forever or into a manager left holding its ports:

- every command from the manager is decoded with json_tricks' comment stripping on, which cuts a message
  at a ``//`` or ``#`` it wrongly thinks is outside a string (the base64 pickle of the space rides in every
  trial-end event, escaped twice); the channel drops the message and the strategy waits for a trial that
  has ended. :func:`strict_json` decodes them as the JSON they are.
- a dropped message or a manager that stops answering is never reported to the strategy:
  :class:`Watchdog` notices (a failed receive on the channel, the manager's own ``ERROR`` status, or no
  answer on its REST port for :data:`SILENCE_S` seconds) and interrupts the main thread, naming the cause.
- SIGTERM kills the search without stopping the manager: :func:`stop_on_signals` turns SIGINT and SIGTERM
  into the interrupt NNI's ``run`` answers by stopping its manager, and :func:`stop_experiment` makes sure
  the manager process is gone.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time

POLL_S = 5.0        # how often the watchdog asks the manager how it is
SILENCE_S = 30.0    # a manager that answers nothing for this long is taken for dead
STOP_S = 30.0       # how long NNI's own stop may take before its manager is killed


class Interrupted(KeyboardInterrupt):
    """The search was stopped by a signal; ``signum`` says which (the CLI exits with 128 + signum)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def strict_json():
    """NNI's ``nni.load`` without comment stripping while the block runs (its messages are plain JSON)."""
    import nni
    from nni.common import serializer

    def load(string=None, *, ignore_comments: bool = False, **kwargs):
        return serializer.load(string, ignore_comments=ignore_comments, **kwargs)

    saved = nni.load
    nni.load = load  # the channel looks ``nni.load`` up at each message
    try:
        yield
    finally:
        nni.load = saved


class _ChannelFailures(logging.Handler):
    """The first failed receive NNI's websocket channel logs (it retries, but the message is lost)."""

    def __init__(self, watchdog: "Watchdog"):
        super().__init__(logging.ERROR)
        self.watchdog = watchdog

    def emit(self, record: logging.LogRecord) -> None:
        if not record.getMessage().startswith("Failed to receive command"):
            return
        exc = record.exc_info[1] if record.exc_info else None
        what = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ") if exc else "?"
        self.watchdog.fail(f"the command channel to NNI's manager failed, a message is lost ({what})")


class Watchdog:
    """Watches the manager on ``port`` from a daemon thread; on the first failure it records the cause and
    interrupts the main thread (NNI's ``run`` then stops the experiment). Later failures keep the first cause."""

    CHANNEL_LOGGER = "nni.runtime.command_channel.websocket.channel"

    def __init__(self, port: int, poll_s: float = POLL_S, silence_s: float = SILENCE_S):
        self.port, self.poll_s, self.silence_s = port, poll_s, silence_s
        self.cause: str | None = None
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._handler = _ChannelFailures(self)
        self._thread = threading.Thread(target=self._watch, name="metanet-nni-watchdog", daemon=True)

    def fail(self, cause: str) -> None:
        with self._lock:
            if self.cause is not None or self._done.is_set():
                return
            self.cause = cause
        silence_broken_channel()
        import _thread
        _thread.interrupt_main()

    def note(self, cause: str) -> None:
        """A cause found by the main thread itself (NNI's own request to the manager timed out): kept, unless
        one was found first; nothing to interrupt."""
        with self._lock:
            if self.cause is None:
                self.cause = cause

    def stand_down(self) -> None:
        """No more interrupts (the experiment is being stopped); the channel's failures are still heard."""
        with self._lock:
            self._done.set()

    def _status(self) -> tuple[str, str | None]:
        from nni.experiment import rest
        answer = rest.get(self.port, "/check-status", "")
        errors = answer.get("errors") or []
        return answer.get("status", "?"), (str(errors[0]).strip().splitlines()[0] if errors else None)

    def _watch(self) -> None:
        last_answer = time.monotonic()
        while not self._done.wait(self.poll_s):
            try:
                status, error = self._status()
            except Exception:
                if time.monotonic() - last_answer > self.silence_s:
                    self.fail(f"NNI's manager on port {self.port} stopped answering for {self.silence_s:.0f} s")
                    return
                continue
            last_answer = time.monotonic()
            if status == "ERROR":
                self.fail(f"NNI's manager reports an error: {error or 'no message'}")
                return

    def __enter__(self) -> "Watchdog":
        channel = logging.getLogger(self.CHANNEL_LOGGER)
        channel.addHandler(self._handler)
        # its tracebacks would reach the terminal through NNI's handlers: the cause is said once, in one line
        self._propagate, channel.propagate = channel.propagate, False
        if not self._done.is_set():  # entered again only to keep the channel quiet while the experiment stops
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stand_down()
        channel = logging.getLogger(self.CHANNEL_LOGGER)
        channel.removeHandler(self._handler)
        channel.propagate = self._propagate


def silence_broken_channel() -> None:
    """Once the cause is known, NNI's retries, its failed stop and its channel thread's death only repeat it as
    tracebacks: NNI logs nothing more in this process, and the listener thread (NNI's ``listen``) dies quietly."""
    logging.getLogger("nni").setLevel(logging.CRITICAL + 1)
    hook = threading.excepthook
    if getattr(hook, "_metanet", False):
        return

    def quiet_listener(args) -> None:
        if args.thread is not None and args.thread.name.endswith("(listen)"):
            return
        hook(args)

    quiet_listener._metanet = True
    threading.excepthook = quiet_listener


@contextlib.contextmanager
def stop_on_signals():
    """SIGTERM (and SIGINT) raise :class:`Interrupted` in the main thread while the block runs; yields a
    list that holds the signal received, if any. Outside the main thread, nothing changes."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum, frame):
        received.append(signum)
        raise Interrupted(signum)

    saved = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


def stop_experiment(exp, timeout_s: float = STOP_S) -> None:
    """Stop ``exp`` as NNI does, and kill its manager if that takes over ``timeout_s`` or leaves it running
    (a manager that no longer answers never acknowledges the stop, and NNI waits for it without limit)."""
    proc = getattr(exp, "_proc", None)
    stopper = threading.Thread(target=lambda: _quietly(exp.stop), daemon=True)
    stopper.start()
    stopper.join(timeout_s)
    if proc is not None and proc.poll() is None:
        proc.kill()
        with contextlib.suppress(Exception):
            proc.wait(10)


def _quietly(fn) -> None:
    with contextlib.suppress(Exception):
        fn()

