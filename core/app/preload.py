"""Libraries the dashboard's pages import lazily, loaded ahead of the first page that needs
them. Light on purpose: importing this module imports nothing heavy."""
from __future__ import annotations

import importlib

# torchvision reads the datasets (about 1.4 s to import on 2 cores, after torch), scikit-learn
# computes the evaluation's metrics, plotly draws every chart; torch comes with the first
LIBRARIES = ("torchvision", "sklearn.metrics", "plotly.graph_objects")


def import_libraries() -> None:
    """Import every library in ``LIBRARIES`` (a no-op for those already imported)."""
    for name in LIBRARIES:
        importlib.import_module(name)
