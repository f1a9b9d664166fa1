"""The notebooks' shape, checked without running them (nbval runs them:
``LAB_NOTEBOOK_MODE=smoke pytest --nbval-lax notebooks/``).

Every notebook: a markdown introduction, a parameter cell reading ``LAB_NOTEBOOK_MODE``
with smoke/default/full settings, bokeh figures (no matplotlib), and committed without
outputs except the cells nbval compares (``# NBVAL_CHECK_OUTPUT``), which must have
theirs. Every thesis experiment of issue 6 has its notebook.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))
MARK = "# NBVAL_CHECK_OUTPUT"

#: thesis figure or section -> a string its notebook's file name contains
REQUIRED = {"quickstart": "quickstart", "fig 2.13": "fig2_13", "fig 2.14": "fig2_14",
            "fig 2.15": "fig2_15", "fig 2.16": "fig2_16", "fig 2.17": "fig2_17",
            "fig 2.18": "fig2_18", "fig 2.19": "fig2_19", "2.6.6": "2_6_6", "2.7": "sec2_7",
            "fig 3.1": "fig3_1", "fig 3.2": "fig3_2", "fig 3.3": "fig3_3", "fig 3.4": "fig3_4",
            "fig 3.5": "fig3_5", "fig 3.6": "fig3_6"}


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _source(cell) -> str:
    s = cell["source"]
    return "".join(s) if isinstance(s, list) else s


def test_every_experiment_has_a_notebook():
    names = [p.name for p in PATHS]
    missing = [what for what, key in REQUIRED.items() if not any(key in n for n in names)]
    assert not missing, f"no notebook for {missing}"


@pytest.mark.parametrize("path", PATHS, ids=[p.name for p in PATHS])
def test_notebook_shape(path):
    nb = _load(path)
    cells = nb["cells"]
    assert cells[0]["cell_type"] == "markdown" and _source(cells[0]).lstrip().startswith("# ")
    code = [c for c in cells if c["cell_type"] == "code"]
    params = _source(code[0])
    assert 'MODE = os.environ.get("LAB_NOTEBOOK_MODE", "default")' in params
    assert "parameters" in code[0].get("metadata", {}).get("tags", [])
    if "quickstart" not in path.name:
        for mode in ("smoke", "default", "full"):
            assert f'"{mode}"' in params, f"the parameter cell has no {mode} setting"
        # the closing comparison is computed: a heading, then code that prints the thesis's value
        assert any(c["cell_type"] == "markdown" and "Compared with the thesis" in _source(c)
                   for c in cells)
        assert "thesis" in _source(code[-1]) and "print(" in _source(code[-1])
    text = "\n".join(_source(c) for c in code)
    assert "matplotlib" not in text
    assert "output_notebook" in text and "show(" in text


@pytest.mark.parametrize("path", PATHS, ids=[p.name for p in PATHS])
def test_committed_light(path):
    """Outputs only where nbval checks them, and those small and text-only."""
    assert path.stat().st_size < 100_000
    for cell in _load(path)["cells"]:
        if cell["cell_type"] != "code":
            continue
        outputs = cell.get("outputs", [])
        if MARK in _source(cell):
            assert outputs, f"checked cell without committed output:\n{_source(cell)[:200]}"
            for o in outputs:
                assert set(o.get("data", {})) <= {"text/plain"}
        else:
            assert not outputs, f"unchecked cell with committed output:\n{_source(cell)[:200]}"
