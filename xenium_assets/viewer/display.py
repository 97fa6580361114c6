"""A screen for napari where there is none: a private Xvfb server, for screenshots and tests.

napari draws with OpenGL through Qt. Qt's ``offscreen`` platform has no OpenGL context to give
(napari then fails or renders black), so a headless machine needs a virtual X server: Debian's
``xvfb`` with the xcb libraries Qt 6 loads (``make test`` installs them where it can).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

XVFB_PACKAGES = (
    "xvfb libgl1 libegl1 libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0 "
    "libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 libxcb-randr0"
)
"""Debian packages that give Qt 6 a virtual screen (`make test` installs them when run as root)."""


class DisplayUnavailable(RuntimeError):
    """No screen and no way to make one."""


@contextmanager
def virtual_display(width: int = 1600, height: int = 1000) -> Iterator[str]:
    """DISPLAY of a private Xvfb for the block (the environment's own DISPLAY if it already has one)."""
    if os.environ.get("DISPLAY"):
        yield os.environ["DISPLAY"]
        return
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        raise DisplayUnavailable(
            f"no screen (DISPLAY is unset) and no Xvfb to make one: install it (apt install {XVFB_PACKAGES})"
        )
    read, write = os.pipe()
    proc = subprocess.Popen(
        [xvfb, "-displayfd", str(write), "-screen", "0", f"{width}x{height}x24", "-nolisten", "tcp"],
        pass_fds=(write,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write)
    with os.fdopen(read) as pipe:
        number = pipe.readline().strip()
    if not number:
        proc.kill()
        raise DisplayUnavailable("Xvfb did not start")
    display = f":{number}"
    saved = {k: os.environ.get(k) for k in ("DISPLAY", "QT_QPA_PLATFORM")}
    os.environ["DISPLAY"] = display
    os.environ["QT_QPA_PLATFORM"] = "xcb"
    try:
        yield display
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        proc.terminate()
        proc.wait(timeout=10)


def qt_problem() -> str | None:
    """Why Qt cannot open a window on the current DISPLAY (None if it can).

    Probed in a child process: a Qt platform plugin that fails to load aborts the whole process.
    """
    probe = (
        "from qtpy.QtWidgets import QApplication, QWidget\n"
        "app = QApplication([]); w = QWidget(); w.show(); app.processEvents()\n"
    )
    try:
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "Qt did not start within 60 s"
    if done.returncode == 0:
        return None
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    hint = next((line for line in lines if "could not" in line.lower() or "needed" in line.lower()), lines[-1:])
    return f"Qt cannot open a window ({hint if isinstance(hint, str) else ' '.join(hint)}); install {XVFB_PACKAGES}"
