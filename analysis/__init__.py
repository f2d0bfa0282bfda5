"""Rebuild the paper's tables and figures from the results database.

Reads only the database (never the trainers). The modules, from the database outwards:

* ``errors``: ``AnalysisError``, the one exception for bad input (a one-line message).
* ``selection``: artefact ids (``<preset>[_<scale>]``) and the cells their presets request.
* ``load``: the one loader: an artefact's runs are the completed runs serving those cells,
  whichever sweep stored them; ``connect(url, label)``, ``runs_line`` (provenance).
* ``stats``: mean, s.e. with ddof=0, bootstrap CIs of a mean and of a crossing step, steps to
  a threshold.
* ``methods``: the one table of methods: label, legend rank, colour, line style, aliases.
* ``paper``: the paper's numbers (``paper_numbers.csv``), looked up by artefact, method,
  metric and the cell's key fields.
* ``tables``: the one row type (``Rows``, CSV columns ``ROW_COLUMNS``), number formats,
  Markdown tables, the provenance header and the writer (CSV + Markdown).
* ``figures``: the one plotting kit: curves with bands, curve grids, bars, style, saving
  (byte-identical reruns).
* ``artifacts``: the registry (``ARTIFACTS``, ``resolve``, ``available``, ``build``); it
  loads the builder families on first use:

  - ``bandits``: Fig 3, Fig 4, Appendix B;
  - ``mnist``: Fig 5(a), Fig 1(a), Fig 5(b);
  - ``reversal_data``: the token-reversal cell model, per-seed statistics, the standard
    table, missing cells (shared by the three families below);
  - ``reversal_terminal``: Fig 1b, Table 3 / Fig 8, Fig 9;
  - ``reversal_dense``: Table 1 / Fig 6, Table 2 / Fig 7, Table 5 / Fig 17, Fig 18;
  - ``reversal_diagnostics``: Figs 11, 12, 15, Fig 13, Fig 14, Fig 16.

* ``report``, ``verdicts``, ``claims``: the paper-vs-ours report built on the artefacts' rows.

Command line: ``python -m analysis`` (``__main__``).
"""
