"""matplotlib for reports: the off-screen Agg backend, imported only when a plot is drawn."""

from __future__ import annotations


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
