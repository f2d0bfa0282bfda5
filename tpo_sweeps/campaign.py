"""Launch each (cell, seed) once: the sweeper of every multirun, and campaign presets.

The paper's artefacts share most of their compute (Fig 1b's cells are Table 3's at H = 10,
Fig 11's are Fig 16's at E = 4 and E = 1, a sequence-grouped method is the same cell under
both ``task.match`` values). Every multirun therefore goes through ``TpoSweeper``
(``hydra/sweeper: tpo``; the class lives in ``hydra_plugins/tpo_sweeps_sweeper`` because
Hydra only loads plugins from that namespace): it expands the command line into cells as
Hydra's basic sweeper would (``tpo_sweeps.sweep.expand``), and launches one job per distinct
cell (``tpo_sweeps.identity``) over the union of the seeds asked for it, with every extra any
request asked for (a diagnostics run serves the requests without diagnostics); cells that
differ only in traced hyperparameters (an η or lr grid) become the lanes of one job and one
compiled program (``lane_launches``, ``tpo_sweeps.lanes``). The jobs then skip the seeds the
database already holds. The multirun callback links every stored or
pending run to each sweep that asked for it (``record_pending``).

A **campaign** preset lists member presets (``campaign: [fig3_tabular_single, ...]``, e.g.
``experiment=paper``): its cells are the union of the members' cells, each member's cell
keeping the member's own ``name``, so the analysis of each artefact and ``status`` of each
preset see their runs whichever member computed them. Any other override on the command line
(``scale=reduced``, ``hardware=slurm_gpu``) applies to every member.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from tpo_sweeps import db
from tpo_sweeps import identity as I
from tpo_sweeps import lanes as LN
from tpo_sweeps import sweep as S
from tpo_sweeps.config import UserError, error_line, is_user_error
from tpo_sweeps.store import run_row

log = logging.getLogger("tpo_sweeps.sweep")


@dataclass
class TpoSweeperConf:
    _target_: str = "hydra_plugins.tpo_sweeps_sweeper.TpoSweeper"
    max_batch_size: int | None = None  # jobs per launcher call (None: all at once)
    params: dict[str, str] | None = None  # the preset's grid, as for Hydra's basic sweeper


@dataclass
class Job:
    """One job to launch: a distinct cell over the union of the seeds asked for it."""

    overrides: list[str]
    cells: list[S.Cell] = field(default_factory=list)  # every request it serves
    cell: S.Cell | None = None  # what it runs: its overrides composed (seeds and extras)

    @property
    def seeds(self) -> list[int]:
        return sorted({s for c in self.cells for s in c.ident.seeds})


def set_override(overrides: list[str], key: str, value: Any) -> list[str]:
    """``overrides`` with ``key=value`` replacing any override of ``key`` (or appended)."""
    out = [o for o in overrides if o.lstrip("+~").partition("=")[0] != key]
    return [*out, f"{key}={value}"]


def _serving_extras(cells: list[S.Cell]) -> dict[str, Any]:
    """The extras that serve every request (``identity.satisfies``): any switch one asks
    for; the gcd of the logging intervals."""
    extras = [c.ident.extras for c in cells]
    return {
        "diagnostics": any(e["diagnostics"] for e in extras),
        "mechanism": any(e["mechanism"] for e in extras),
        "log_every": math.gcd(*(e["log_every"] for e in extras)),
    }


def unique_jobs(cells: list[S.Cell]) -> list[Job]:
    """One job per distinct cell, in the order cells first appear.

    The job runs the first request's overrides with the seeds widened to cover every request
    (the lowest to the highest seed asked for: seeds are contiguous per request, and a gap
    between requests is filled rather than split into two jobs) and the extras that serve
    every request.
    """
    groups: dict[str, list[S.Cell]] = {}
    for cell in cells:
        groups.setdefault(cell.ident.cell, []).append(cell)
    jobs = []
    for group in groups.values():
        first = group[0]
        overrides = list(first.overrides)
        if len(group) > 1:
            seeds = sorted({s for c in group for s in c.ident.seeds})
            if seeds != first.ident.seeds:
                overrides = set_override(overrides, "seed", seeds[0])
                overrides = set_override(overrides, "num_seeds", seeds[-1] - seeds[0] + 1)
            for name, value in _serving_extras(group).items():
                if value != first.ident.extras[name]:
                    text = str(value).lower() if isinstance(value, bool) else value
                    overrides = set_override(overrides, I.EXTRAS[name], text)
        launched = first if overrides == first.overrides else None
        jobs.append(Job(overrides, group, launched))
    for job in jobs:  # the widened ones, composed as their job will compose them
        if job.cell is None:
            job.cell = S._with_hydra(lambda job=job: S.compose_cell(job.overrides))
    return jobs


def lane_launches(jobs: list[Job]) -> list[tuple[list[str], list[Job]]]:
    """The launches of ``jobs``: ``(overrides, jobs it runs)``. Jobs whose configs differ only
    in traced hyperparameters (``tpo_sweeps.lanes``) run as the lanes of one launch when
    their ``hardware.lanes`` is on: the first job's overrides plus ``lanes=[...]``, one entry
    per job with its traced values. Any other job is its own launch."""
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        cfg = job.cell.config
        key = LN.group_key(cfg) if cfg.hardware.lanes and not cfg.lanes else f"#{len(groups)}"
        groups.setdefault(key, []).append(job)
    launches = []
    for group in groups.values():
        if len(group) == 1:
            launches.append((group[0].overrides, group))
            continue
        values = LN.lane_values([job.cell.config for job in group])
        entries = ",".join(repr(_lane_text(job, v)) for job, v in zip(group, values, strict=True))
        launches.append(([*group[0].overrides, f"lanes=[{entries}]"], group))
    return launches


def _lane_text(job: Job, values: dict[str, Any]) -> str:
    """A lane's entry of ``lanes``: its traced values, as the job's own overrides spell them
    where they set them (so each lane's stored overrides read as the cell's alone)."""
    spelled = {o.lstrip("+~").partition("=")[0]: o for o in job.overrides}
    return " ".join(spelled.get(k, f"{k}={v!r}") for k, v in values.items())


def record_pending(engine, sweep: S.Sweep) -> int:
    """Before the jobs start: link every requested seed to the run that will serve it, for
    the sweep that asked (the cell's preset) and the campaign. A seed already served by a
    completed run is linked to it; the others to a pending row of the job that will compute
    them (with that job's extras, so no pending row is left behind that no job runs).
    Returns how many pending rows were new."""
    jobs = unique_jobs(sweep.cells)
    S.refresh(sweep, [engine])
    S.refresh(S.Sweep(sweep.name, [j.cell for j in jobs]), [engine])
    requests = []
    with engine.begin() as conn:
        for job in jobs:
            todo = {
                s: run_row(job.cell.ident, s, job.overrides)
                for s, status in job.cell.seed_status.items()
                if status not in db.FINAL
            }
            for cell in job.cells:
                done = [
                    cell.run_ids[s] for s in cell.ident.seeds if cell.seed_status.get(s) in db.FINAL
                ]
                rows = [todo[s] for s in cell.ident.seeds if s in todo]
                for name in {cell.config.name, sweep.name}:
                    db.link(conn, name, done)
                    if rows:
                        requests.append((name, rows))
    return db.add_pending(engine, requests)


def launch(sweeper, arguments: list[str]) -> list:
    """``TpoSweeper.sweep``: expand, deduplicate, launch in batches; the job returns."""
    from pathlib import Path

    from omegaconf import OmegaConf

    config = sweeper.config
    t0 = time.perf_counter()
    # the preset's grid (hydra.sweeper.params) is read back by expand from the config itself
    hydra_args = OmegaConf.to_container(config.hydra.overrides.hydra, resolve=False)
    sweep = S.expand([*arguments, *hydra_args])
    if not config.db.stage:  # a database that cannot be used: one line, before any folder
        db.connect(sweep.db_url, float(config.db.busy_timeout_s)).dispose()
    jobs = unique_jobs(sweep.cells)
    launches = lane_launches(jobs)
    laned = [group for _, group in launches if len(group) > 1]
    log.info(
        "sweep %s: %d requested cells -> %d distinct cells -> %d jobs%s (%.1fs to expand)",
        sweep.name,
        len(sweep.cells),
        len(jobs),
        len(launches),
        f" ({sum(map(len, laned))} cells as lanes of {len(laned)})" if laned else "",
        time.perf_counter() - t0,
    )
    sweep_dir = Path(str(config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    saved = sweep_dir / "multirun.yaml"
    OmegaConf.save(config, saved)
    saved.write_text(db.redact(saved.read_text()))  # db.url as given may hold a password
    batch_size = sweeper.max_batch_size or len(launches) or 1
    returns, index = [], 0
    outcome = Outcome(sweep.name)
    for i in range(0, len(launches), batch_size):
        batch = [overrides for overrides, _ in launches[i : i + batch_size]]
        sweeper.validate_batch_is_legal(batch)
        results = sweeper.launcher.launch(batch, initial_job_idx=index)
        for r in results:
            outcome.add(r)
        index += len(batch)
        returns.append(results)
    outcome.check()
    return returns


class SweepFailed(UserError):
    """Some jobs of a multirun failed or diverged (each is stored; the others still ran)."""


@dataclass
class Outcome:
    """What a multirun's jobs came to: every job runs, and the sweep fails at the end (one
    line) when any job failed or diverged, as a single job does."""

    name: str
    failed: list[tuple[str, str]] = field(default_factory=list)  # (overrides, error line)
    diverged: list[tuple[str, str]] = field(default_factory=list)
    staged: list[str] = field(default_factory=list)

    def add(self, r) -> None:
        from hydra.core.utils import JobStatus

        cell = " ".join(r.overrides)
        if r.status == JobStatus.FAILED:
            e = r._return_value
            line = error_line(e) if is_user_error(e) else f"{type(e).__name__}: {error_line(e)}"
            log.error("job %s failed: %s", cell, db.redact(line))
            self.failed.append((cell, line))
            return
        value = r.return_value
        status = value.get("status") if isinstance(value, dict) else None
        if status == db.DIVERGED:
            seed, text = min(value["diverged"].items())
            self.diverged.append((cell, f"seed {seed}: {text.removeprefix('diverged: ')}"))
        elif status == "staged":
            self.staged.append(value["staged_to"])

    def check(self) -> None:
        parts = []
        for what, items in (("failed", self.failed), ("diverged", self.diverged)):
            if items:
                cell, line = items[0]
                more = f" and {len(items) - 1} more" if len(items) > 1 else ""
                parts.append(f"{len(items)} job(s) {what} ({cell}: {line}{more})")
        if self.staged:
            log.warning(
                "sweep %s: %d job(s) found the database locked and staged their results",
                self.name,
                len(self.staged),
            )
        if parts:
            raise SweepFailed(
                db.redact(
                    f"sweep {self.name}: {'; '.join(parts)}; the others ran. List them with "
                    "'python -m tpo_sweeps status <the same overrides>'"
                )
            )
