"""Rebuild the paper's tables and figures from the results database.

Reads only the database (never the trainers): ``selection`` (artefact ids and the cells their
presets request) and ``load`` (the one loader: an artefact's runs are the completed runs
serving those cells, whichever sweep stored them) -> ``stats``
(mean, s.e. with ddof=0, bootstrap CI, steps to threshold) -> ``tables`` / ``figures``;
``artifacts`` holds one builder per paper artefact in ``ARTIFACTS``, keyed by the id shared
with the experiment preset. Command line: ``python -m analysis``.
"""
