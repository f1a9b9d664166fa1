"""A small terminal progress bar for the CLI (no dependency beyond the standard library)."""
from __future__ import annotations

import sys
import time


class Progress:
    """``with Progress(total, "training") as bar: bar.update(1, loss=0.1)``.

    ``total`` may be None (unknown length) or a number of seconds when ``unit='s'``
    (wall-time bounded runs). Redraws at most ten times a second; on a non-terminal
    stream (CI logs) it prints a plain line every ``log_every`` seconds instead.
    """

    def __init__(self, total: float | None, desc: str = "", unit: str = "it",
                 stream=None, width: int = 28, log_every: float = 10.0):
        self.total, self.desc, self.unit, self.width = total, desc, unit, width
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.n = 0.0
        self.fields: dict[str, object] = {}
        self.start = time.monotonic()
        self._last_draw = 0.0
        self.log_every = log_every

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def update(self, n: float = 1, **fields) -> None:
        self.n += n
        self.set(self.n, **fields)

    def set(self, n: float, **fields) -> None:
        self.n = n
        self.fields.update(fields)
        now = time.monotonic()
        if now - self._last_draw >= (0.1 if self.tty else self.log_every):
            self._draw(now)

    def _line(self, now: float) -> str:
        elapsed = now - self.start
        extra = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in self.fields.items())
        if self.total:
            frac = min(1.0, self.n / self.total)
            filled = int(frac * self.width)
            bar = "#" * filled + "-" * (self.width - filled)
            eta = elapsed / frac - elapsed if frac > 0 else float("nan")
            return (f"{self.desc} [{bar}] {frac * 100:5.1f}% {self.n:.0f}/{self.total:.0f}{self.unit} "
                    f"{elapsed:.0f}s<{eta:.0f}s {extra}")
        return f"{self.desc} {self.n:.0f}{self.unit} {elapsed:.0f}s {extra}"

    def _draw(self, now: float) -> None:
        self._last_draw = now
        line = self._line(now)
        if self.tty:
            self.stream.write("\r" + line[:200].ljust(100))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        self._draw(time.monotonic())
        if self.tty:
            self.stream.write("\n")
        self.stream.flush()
