"""Read run directories into tidy pandas frames, and build the paper's figures and tables.

Pure functions on files and DataFrames: no Streamlit, no training code. The run-directory
format is described in ``docs/run-format.md`` and read through :mod:`runformat`.

- :mod:`analysis.load`: :func:`load_runs` reads every run under a root into a :class:`RunData`
  (frames ``runs``, ``metrics``, ``weights`` and a list of warnings).
- :mod:`analysis.aggregate`: final weights, averages per group / block, batch-setting order.
- :mod:`analysis.figures`: plotly builders (Fig. 1(c), 2, 3, 4, 6 analogues, weight trajectories).
- :mod:`analysis.tables`: the Table 2 analogue (accuracy per norm x batch setting).
- :mod:`analysis.results`: ``python -m analysis.results --root runs`` prints that table.
"""

from analysis.load import RunData, load_runs

__all__ = ["RunData", "load_runs"]
