"""What a run shows while it works: a line per stage and a bar for training, on stderr, from rank 0 alone.

    with stage("exporting model.onnx", shown=run.progress):   # exporting model.onnx ... done in 2.1 s
        ...
    bar = Bar("distilling", total=2000, every=0.1)              # training steps, with rate and ETA
    bar.update(1, loss="0.123")
    bar.close()

A stage says nothing until it has run `DELAY` seconds, so quick ones stay silent (and a bad input,
found before any slow work, stays a one-line error); then it writes its line at once, flushed, and
finishes it with how long it took. In a terminal a Bar is a tqdm bar with its rate and ETA; elsewhere
(a pipe, a log file) it writes a plain line every `every` of its total with the same figures, since
a bar redrawn in place reaches a pipe only when it closes.

tqdm rather than rich: tqdm is a dependency of ours already and draws every bar the package shows;
rich comes only through typer, which need not bring it.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Iterable, Iterator, TypeVar

from tqdm.auto import tqdm

from . import distributed

T = TypeVar("T")
# A stage that ends sooner than this says nothing.
DELAY = 1.0

_lock = threading.RLock()
_open: list = [None]  # the stage whose line is written but not yet finished


def _write(text: str, stream=None) -> None:
    stream = stream or sys.stderr
    stream.write(text)
    stream.flush()


def _terminal() -> bool:
    return sys.stderr.isatty()


def duration(seconds: float) -> str:
    """2.1 s, 3m05s, 1h02m."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}m{seconds:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def break_line() -> None:
    """Finish a stage's unfinished line, so that what is written next starts a line of its own."""
    with _lock:
        if _open[0] is not None:
            _write("\n", _open[0].stream)
            _open[0] = None


def write(line: str) -> None:
    """One line on stderr that leaves open stage lines and bars intact."""
    with _lock:
        break_line()
        tqdm.write(line, file=sys.stderr)
        sys.stderr.flush()


class stage:
    """`with stage(label):` a line `label ... done in 2.1 s` once the stage has run `delay` seconds."""

    def __init__(self, label: str, shown: bool = True, delay: float | None = None):
        self.label, self.delay = label, DELAY if delay is None else delay
        self.shown = shown and distributed.is_main()
        self.said = self.ended = False
        self.timer: threading.Timer | None = None
        # stderr as the stage found it: the work inside may redirect sys.stderr to silence a library.
        self.stream = sys.stderr

    def __enter__(self) -> "stage":
        self.started = time.perf_counter()
        if self.shown:
            self.timer = threading.Timer(self.delay, self._say)
            self.timer.daemon = True
            self.timer.start()
        return self

    def _say(self) -> None:
        with _lock:
            if self.ended:
                return
            break_line()
            _write(f"{self.label} ...", self.stream)
            _open[0], self.said = self, True

    def __exit__(self, kind, value, traceback) -> None:
        if self.timer is not None:
            self.timer.cancel()
        with _lock:
            self.ended = True
            if not self.said:
                return
            outcome = "done" if kind is None else "interrupted" if issubclass(kind, KeyboardInterrupt) else "failed"
            ending = f" {outcome} in {duration(time.perf_counter() - self.started)}\n"
            if _open[0] is self:
                _write(ending, self.stream)
                _open[0] = None
            else:
                _write(self.label + ending, self.stream)


class Bar:
    """A counted stage, `total` units from `initial`: tqdm's bar in a terminal. Elsewhere, with `every`, a line
    at the start, one every `every` of the total and one at the end; without it, the one line of a `stage`."""

    def __init__(self, label: str, total: int, *, initial: int = 0, unit: str = "step", shown: bool = True,
                 every: float | None = None):
        self.label, self.total, self.done, self.unit, self.every = label, total, initial, unit, every
        self.shown = shown and distributed.is_main()
        self.terminal = _terminal()
        self.started, self.initial, self.postfix, self.closed = time.perf_counter(), initial, {}, False
        self.bar, self.stage = None, None
        if self.shown and self.terminal:
            break_line()
            self.bar = tqdm(total=total, initial=initial, desc=label, unit=unit, dynamic_ncols=True, file=sys.stderr)
        elif self.shown and every is None:
            self.stage = stage(f"{label} {total} {unit}{'s' * (total != 1)}").__enter__()
        elif self.shown:
            write(f"{label} {initial}/{total} {unit}s ...")

    def update(self, n: int = 1, **postfix) -> None:
        before, self.done = self.done, self.done + n
        self.postfix = postfix
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(refresh=False, **postfix)
            self.bar.update(n)
        elif self.shown and self.every and self.done < self.total:
            step = max(self.total * self.every, 1)
            if int(self.done // step) > int(before // step):
                write(self._line())

    def _line(self) -> str:
        elapsed = time.perf_counter() - self.started
        rate = (self.done - self.initial) / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.label} {self.done}/{self.total} {self.unit}s ({100 * self.done / self.total:.0f}%)"]
        if rate > 0:
            parts.append(f"{rate:.3g} {self.unit}s/s, ETA {duration((self.total - self.done) / rate)}")
        parts += [f"{key} {value}" for key, value in self.postfix.items()]
        return ", ".join(parts)

    def write(self, line: str) -> None:
        if self.shown:
            write(line)

    def __enter__(self) -> "Bar":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.close(kind)

    def close(self, failure: type | None = None) -> None:
        """`failure`: the exception's type when the stage ended in one."""
        if self.closed:
            return
        self.closed = True
        if self.bar is not None:
            self.bar.close()
        elif self.stage is not None:
            self.stage.__exit__(failure, None, None)
        elif self.shown:
            elapsed = duration(time.perf_counter() - self.started)
            outcome = "done" if self.done >= self.total else "stopped"
            write(f"{self.label} {self.done}/{self.total} {self.unit}s {outcome} in {elapsed}"
                  + "".join(f", {key} {value}" for key, value in self.postfix.items()))


def each(items: Iterable[T], label: str, *, unit: str = "item", shown: bool = True) -> Iterator[T]:
    """`items` one by one, counted by a Bar (one line outside a terminal), like `tqdm(items)`."""
    items = list(items)
    bar = Bar(label, len(items), unit=unit, shown=shown)
    failure = None
    try:
        for item in items:
            yield item
            bar.update()
    except BaseException as e:  # GeneratorExit too: the loop was left early
        failure = type(e)
        raise
    finally:
        bar.close(failure)
