"""Keep committed notebooks light: ``python notebooks/_nbtools.py refresh|strip NB...``.

``strip``    drop every output and execution count, except the outputs of cells marked
             ``# NBVAL_CHECK_OUTPUT`` (nbval compares those, so they must be committed).
``refresh``  execute each notebook (``LAB_NOTEBOOK_MODE``, default smoke) in its own
             directory, then strip: the checked cells get fresh outputs.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat

MARK = "# NBVAL_CHECK_OUTPUT"


def strip(nb) -> None:
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if MARK in cell.source:
            # Keep the text nbval compares; drop rich duplicates (HTML) and timings.
            outs = []
            for o in cell.outputs:
                if o.get("output_type") == "stream" and o.get("name") == "stderr":
                    continue
                if "data" in o:
                    o["data"] = {k: v for k, v in o["data"].items() if k == "text/plain"}
                    if not o["data"]:
                        continue
                    o["metadata"] = {}
                outs.append(o)
            cell.outputs = outs
            for o in cell.outputs:
                if "execution_count" in o:
                    o["execution_count"] = cell.execution_count
        else:
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)


def refresh(path: Path) -> float:
    from nbclient import NotebookClient
    nb = nbformat.read(path, as_version=4)
    os.environ.setdefault("LAB_NOTEBOOK_MODE", "smoke")
    t0 = time.monotonic()
    NotebookClient(nb, timeout=1800, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = time.monotonic() - t0
    strip(nb)
    nbformat.write(nb, path)
    return seconds


def main(argv) -> int:
    if len(argv) < 2 or argv[0] not in ("strip", "refresh"):
        print(__doc__)
        return 2
    for name in argv[1:]:
        path = Path(name)
        if argv[0] == "refresh":
            print(f"{path.name}: {refresh(path):.1f} s", flush=True)
        else:
            nb = nbformat.read(path, as_version=4)
            strip(nb)
            nbformat.write(nb, path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
