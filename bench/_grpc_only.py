"""The footprint floor of the ``agent`` section: a Python process that imports grpc and does
nothing else. Writes ``--ready-file`` once imported; runs until SIGTERM.

    python -m bench._grpc_only --ready-file PATH
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import grpc  # noqa: F401  # the point of the process


def main() -> None:
    ready = Path(sys.argv[sys.argv.index("--ready-file") + 1])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    ready.write_text("ready\n")
    while not stop.wait(0.5):
        pass


if __name__ == "__main__":
    main()
