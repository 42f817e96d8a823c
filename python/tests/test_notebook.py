"""The example notebook runs headless, top to bottom, in a real Jupyter kernel; any cell error fails."""

import os

import nbformat
from nbclient import NotebookClient

NOTEBOOK = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "grokking_walkthrough.ipynb")


def test_the_example_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("GROKLENS_NOTEBOOK_RUN", str(tmp_path / "run"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    figures = [o for o in outputs if o.output_type == "display_data" and "application/vnd.plotly.v1+json" in o.data]
    assert len(figures) >= 7, f"{len(figures)} plotly figures"
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "key frequencies:" in text and "patched, per head (TransformerLens)" in text
    assert os.path.exists(tmp_path / "run" / "final.safetensors")
