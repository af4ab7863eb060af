"""Comparative reports of a study: tables, figures and findings, as HTML and Markdown.

:func:`report` reads a results folder (:func:`shiftsim.store.load`) and writes::

    out_dir/
      index.html           self-contained: figures embedded as data URIs, inline CSS, no network
      README.md            the same content, linking the PNG figures
      report.json          what was reported (study, baseline, counts, files); marks the folder
      tables/<name>.csv    the numbers (summary, comparison, phases, runs)
      tables/<name>.md, tables/<name>.html   each formatted table on its own
      figures/<name>.png, figures/<name>.svg

The tables' numbers are :mod:`shiftsim.metrics` over the stored per-run summaries
(``docs/metrics.md``; see :mod:`shiftsim.report.tables`); the figures are
:mod:`shiftsim.plots`; the findings (:mod:`shiftsim.report.findings`) are sentences generated from
the same numbers. Diverged and failed runs are counted and listed, never dropped.

Nothing partial is left behind: the report is written to a temporary folder next to
``out_dir`` and renamed into place at the end; an earlier report in ``out_dir`` is replaced only
then (and only a folder that holds a shiftsim report, or an empty one, is ever replaced).

>>> import tempfile, pathlib, shiftsim as ss
>>> from shiftsim.study import Study, flip_rates
>>> with tempfile.TemporaryDirectory() as d:
...     study = Study("doc", flip_rates(ss.data.digits(), [0.0, 1.0], tasks=2, steps_per_task=30),
...                   ss.models.mlp(hidden=(16,)), {"sgdm": "sgdm", "adam": "adam"}, seeds=2)
...     _ = study.run(f"{d}/results", workers=1, progress=False)
...     path = report(f"{d}/results", f"{d}/report")
...     sorted(p.name for p in path.iterdir())
doc: 8/8 runs complete (8 ran now)...
['README.md', 'figures', 'index.html', 'report.json', 'tables']
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import sys
import time
import types
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..errors import ShiftsimError, SpecTypeError, check_range
from ..store import check_out_dir
from .document import Document, FigureFile, Table, render_html, render_markdown
from .tables import build, hyperparameter_columns
from .view import StudyView, view

__all__ = ["report", "build_document", "REPORT_FILE", "Document"]

#: the file that marks a folder as a shiftsim report (so that it may be replaced)
REPORT_FILE = "report.json"
REPORT_FORMAT = 1
FIGURE_FORMATS = ("png", "svg")
_TMP = ".tmp-report-"
_OLD = ".old-report-"


def _check_path(value: Any, what: str) -> Path:
    if not isinstance(value, (str, os.PathLike)):
        raise SpecTypeError(f"{what} must be a folder path, got {value!r}")
    return Path(value)


def _check_out(study: Path, out: Path) -> None:
    """Refuse an output folder that would clobber something that is not a report."""
    s, o = study.resolve(), out.resolve()
    if o == s or o in s.parents:
        raise ShiftsimError(f"the report folder {str(out)!r} would replace the study folder "
                            f"{str(study)!r}; choose another --out")
    if out.exists():
        if not out.is_dir():
            raise ShiftsimError(f"report folder {str(out)!r} exists and is not a folder")
        if any(out.iterdir()) and not (out / REPORT_FILE).is_file():
            raise ShiftsimError(f"report folder {str(out)!r} exists, is not empty and holds no "
                                f"shiftsim report ({REPORT_FILE}); choose another folder or "
                                "empty it")
    check_out_dir(out, what="report folder")  # no part of its path is a file; writable


def _tuned_names(v: StudyView) -> dict[str, set[str]]:
    """Per optimizer label, the hyperparameters a tuned study chose (the tuning table's)."""
    t = v.tuning
    if t is None or t.empty:
        return {}
    hp = hyperparameter_columns(t)
    return {str(opt): {c for c in hp if g[c].notna().any()}
            for opt, g in t.groupby("optimizer", sort=False)}


def _optimizer_text(v: StudyView) -> str:
    """Each arm's optimizer and settings; a tuned hyperparameter shows as ``tuned`` (the
    chosen values are in the table of tuned settings), never the spec's untuned default."""
    axes = ((v.study or {}).get("axes") or {}).get("optimizers") or {}
    tuned = _tuned_names(v)
    parts = []
    for arm in v.arms:
        label = v.runs.loc[v.runs["optimizer"] == arm, "optimizer_label"].iloc[0]
        o = (axes.get(label) or {}).get("optimizer") or {}
        hp = dict(o.get("hparams") or {})
        for k in sorted(tuned.get(str(label), set())):
            hp[k] = "tuned"
        detail = ", ".join(f"{k}={v_:g}" if isinstance(v_, float) else f"{k}={v_}"
                           for k, v_ in hp.items() if not (k == "weight_decay" and v_ == 0))
        name = o.get("name")
        spec = f"{name}({detail})" if name else ""
        parts.append(f"{arm}" + (f" = {spec}" if spec and spec != arm else ""))
    return "; ".join(parts)


def _facts(v: StudyView, study_dir: Path) -> list[tuple[str, str]]:
    runs = v.runs
    counts = runs["status"].value_counts()
    status = ", ".join(f"{int(counts[s])} {s}" for s in ("ok", "diverged", "failed",
                                                          "incomplete", "pending")
                       if counts.get(s, 0))
    seeds = sorted(runs["seed"].dropna().unique().tolist())
    facts = [("study", f"{v.name} (results folder `{study_dir}`)")]
    desc = (v.study or {}).get("description")
    if desc:
        facts.append(("description", str(desc)))
    facts += [
        ("runs", f"{len(runs)}: {status}"),
        ("scenarios", f"{len(v.scenarios)}: {', '.join(v.scenarios[:12])}"
         + (" ..." if len(v.scenarios) > 12 else "")),
        ("optimizers", _optimizer_text(v)),
        ("baseline", f"{v.baseline} ({v.baseline_reason})"),
        ("seeds", f"{len(seeds)}: {', '.join(str(s) for s in seeds[:20])}"
         + (" ..." if len(seeds) > 20 else "")),
    ]
    if "model" in runs.columns and runs["model"].notna().any():
        facts.append(("models", ", ".join(str(m) for m in runs["model"].dropna().unique())))
    facts.append(("compute", _compute_text(v, study_dir)))
    source = (v.study or {}).get("source")
    if source:
        facts.append(("regenerate", f"`shiftsim study {source} --out {study_dir}` (resumes; a "
                                    "finished study recomputes nothing), then `shiftsim report "
                                    f"{study_dir} --out <this folder> --baseline {v.baseline}`"))
    tuning = (v.study or {}).get("tuning")
    if tuning:
        facts.append(("tuning", _tuning_text(v, tuning)))
    else:
        facts.append(("tuning", "none: each optimizer ran at the one setting given (a "
                                "comparison of these settings, not of the optimizers)"))
    return facts


def _compute_text(v: StudyView, study_dir: Path) -> str:
    """How much run time the study's results took and where (from the stored runs: tuning
    runs included)."""
    from .. import store

    try:
        runs = store.load(study_dir, verify=False).runs
    except ShiftsimError:
        runs = v.runs
    done = runs[runs["status"].isin(("ok", "diverged"))]
    total = float(done["total_s"].sum()) if "total_s" in done else math.nan
    where = sorted(str(m) for m in done["machine"].dropna().unique()) if "machine" in done \
        else []
    text = (f"{len(done)} runs, {total / 60:.1f} min of run time in all (each run's wall "
            "time; runs of one fleet share theirs)")
    if where:
        text += f" on {'; '.join(where)}"
    return text + "."


def _tuning_text(v: StudyView, t: dict[str, Any]) -> str:
    scope = t.get("scope")
    on = t.get("on")
    where = ("per scenario: each optimizer's best on each scenario (the most favourable case "
             "for every optimizer)" if scope == "per_scenario" else
             f"shared: tuned once on {on if on else 'all scenarios pooled'} and used everywhere")
    seeds = t.get("seeds") or []
    metric = t.get("metric")
    metric = ("online accuracy (against the original labels for label noise and partial "
              "permute or pair flips below 50 %)"
              if metric == "auto" else str(metric))
    grid = t.get("grid")
    if grid == "auto":
        grids = "the default grid of each optimizer family (log-spaced, 3 decades, 7 points)"
    else:
        parts = []
        for opt, hp in (grid or {}).items():
            if not hp:
                parts.append(f"{opt}: default")
                continue
            bits = []
            for name, vals in hp.items():
                nums = [x for x in vals if isinstance(x, (int, float))]
                bits.append(f"{name} {min(nums):g}–{max(nums):g} ({len(vals)} points)"
                            if len(nums) == len(vals) and len(vals) > 1 else
                            f"{name} {', '.join(map(str, vals))}")
            parts.append(f"{opt}: {'; '.join(bits)}")
        grids = "; ".join(parts)
    ext = t.get("extend") or 0
    return (f"{where}; selection metric {metric}, mean over {len(seeds)} tuning seeds, disjoint "
            f"from the evaluation seeds; grids: {grids}"
            + (f"; a best value at a grid's edge widened the grid by a decade (up to {ext} "
               "times)" if ext else "") + ". Tables and comparisons use the evaluation runs only.")


NOTES = [
    ("Definitions", (
        "Online accuracy is prequential: every batch is scored with the parameters from before "
        "the update on it, then trained on (Cai et al. 2021); the stream value is Σ correct / "
        "Σ samples. Recovery after a shift into phase k (shiftsim's version 2): the target is "
        "chance + 90 % of the way from chance to the reference, the reference being the same "
        "for every optimizer of a scenario (the lower of the phase's ceiling and the best mean "
        "plateau over seeds any optimizer reached). The shift hurts when the 20-step trailing "
        "accuracy (never averaged across a phase boundary) falls below the target for 5 "
        "steps; the recovery time is counted from the shift's first step (a ramp's first step) "
        "to the first step after that from which it stays at or above the target for 20 "
        "steps; reported in steps and in samples; censored when that never happens within the "
        "phase, or when the learner ends the phase within 0.05 of chance (a collapse). A shift "
        "that never pushes the curve below the target recovers in 0 steps; a phase that "
        "changes nothing (a flip rate of 0) has no recovery. Label noise, and a partial "
        "permute or pair flip below 50 % (noise around the original concept), are judged on "
        "the original labels. Drop depth: the mean accuracy over the last 20 steps before the "
        "shift minus the lowest trailing accuracy in the phase. Recovery deficit: the mean over "
        "the phase of the shortfall below the reference. Held-out accuracy is measured on "
        "held-out samples of the current regime, with concept label shifts applied (a partial "
        "permute by its majority mapping) but not label noise. ACC, BWT (Lopez-Paz & Ranzato "
        "2017) and forgetting (Chaudhry et al. 2018) come from the accuracy matrix R[i, j] "
        "(held-out accuracy on the distinct regime j after phase i). The seed is the unit of "
        "replication: each run's shifts of one kind are reduced to their median first (a "
        "scenario whose shifts are of several kinds, say a rotation and a label permutation, "
        "is reported per kind); recovery times are "
        "summarised by their median over seeds (never recovering counted as +∞, undefined when "
        "half or more never recover) with a bootstrap interval, accuracies by their mean with "
        "a Student-t interval. Comparisons with the baseline are paired by seed (t test; "
        "Wilcoxon signed-rank for recovery times) and Holm-adjusted over the whole report. "
        "The exact formulas are in shiftsim's docs/metrics.md and in shiftsim.metrics.")),
    ("Runs that fail", (
        "A run whose loss becomes non-finite stops and is marked diverged; its metrics cover "
        "the steps before and it is counted and flagged (†) in the tables. A run that raised "
        "is marked failed and has no metrics. Both are listed under 'Runs that did not finish "
        "normally' and in tables/runs.csv; none is dropped.")),
]


def build_document(v: StudyView, figures: list[FigureFile], findings: list[str],
                   study_dir: Path) -> Document:
    """The :class:`~shiftsim.report.document.Document` of a built study view."""
    tables = [v.tables[k] for k in ("league", "summary", "kinds", "league_families",
                                    "first_places", "tuning", "comparison", "heldout", "phases")
              if k in v.tables]
    if len(v.tables["runs"].display):
        tables.append(v.tables["runs"])
    files = [("index.html", "this report, self-contained"),
             ("README.md", "the same report in Markdown, linking the figures"),
             (REPORT_FILE, "what was reported (study, baseline, run counts, files)")]
    files += [(f"tables/{t.name}.csv", "every run, with its labels, status and scores"
               if t.name == "runs" else f"{t.title.lower()}: the numbers (unformatted)")
              for t in v.tables.values()]
    files += [(f"figures/{f.name}.{{png,svg}}", f.title) for f in figures]
    return Document(
        title=f"Report: {v.name}",
        subtitle=(f"How {len(v.arms)} optimizer{'s' if len(v.arms) != 1 else ''} cope with the "
                  f"shifts of {len(v.scenarios)} scenario{'s' if len(v.scenarios) != 1 else ''},"
                  f" over seeds, written by shiftsim."),
        facts=_facts(v, study_dir), findings=findings, tables=tables, figures=figures,
        notes=NOTES, files=files)


def _save_figures(figs: Iterable[Any], folder: Path, dpi: int) -> list[FigureFile]:
    """Write each figure as PNG and SVG and close it before the next is drawn."""
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for f in figs:
        try:
            buf = io.BytesIO()
            f.figure.savefig(buf, format="png", dpi=dpi)
            png = buf.getvalue()
            (folder / f"{f.name}.png").write_bytes(png)
            with plt.rc_context({"svg.hashsalt": f.name}):  # same figure, same file
                f.figure.savefig(folder / f"{f.name}.svg", format="svg", metadata={"Date": None})
            w, h = f.figure.get_size_inches()
        finally:
            plt.close(f.figure)
        out.append(FigureFile(f.name, f.title, f.caption, png, int(round(w * 96)),
                              int(round(h * 96)), FIGURE_FORMATS))
    return out


def _write_tables(tables: dict[str, Table], folder: Path) -> None:
    from .document import html_table, markdown_table

    folder.mkdir(parents=True, exist_ok=True)
    for t in tables.values():
        t.data.to_csv(folder / f"{t.name}.csv", index=False)
        (folder / f"{t.name}.md").write_text(
            f"### {t.title}\n\n{markdown_table(t.display)}\n\n_{t.caption}_\n", encoding="utf-8")
        (folder / f"{t.name}.html").write_text(
            f"<h3>{t.title}</h3>\n{html_table(t.display)}\n<p>{t.caption}</p>\n",
            encoding="utf-8")


def _replace(tmp: Path, out: Path) -> None:
    """Move the finished report ``tmp`` to ``out``, replacing an earlier report there."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}{_OLD}{os.getpid()}-{os.urandom(3).hex()}")
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def report(study_dir: str | os.PathLike, out_dir: str | os.PathLike,
           baseline: str | None = None, *, window: int = 20, level: float = 0.95,
           dpi: int = 130, progress: Callable[[str], None] | None = None) -> Path:
    """Write the comparative report of the study in ``study_dir`` to ``out_dir``.

    Args:
        study_dir: a results folder written by :meth:`shiftsim.Study.run` (or ``shiftsim run
            --out``).
        out_dir: the report folder; created, or replaced when it holds an earlier report.
        baseline: the optimizer label the others are compared against (paired by seed);
            default: the study's first optimizer. A registry name works when it identifies one
            optimizer of the study.
        window: smoothing window (steps) of the accuracy curves in the figures. The tables use
            the metrics stored with each run (window 20, target 90 % of the plateau).
        level: the confidence level of every interval.
        dpi: resolution of the PNG figures.
        progress: called with a short text before each stage (the CLI prints them on a
            terminal).

    Returns the report folder. Raises :class:`~shiftsim.errors.ShiftsimError` (one line,
    naming the problem) for a missing or empty study folder, a study without a single run with
    results, an unknown baseline, or an ``out_dir`` that is not a report folder.
    """
    from .. import store
    from .figures import build_figures
    from .findings import findings as make_findings

    study = _check_path(study_dir, "study_dir")
    out = _check_path(out_dir, "out_dir")
    if baseline is not None and not isinstance(baseline, str):
        raise SpecTypeError(f"baseline must be an optimizer label (a string), got {baseline!r}")
    window = check_range(window, "window", 1, integer=True)
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise ShiftsimError(f"level must be a number in (0, 1), e.g. 0.95, got {level!r}")
    dpi = check_range(dpi, "dpi", 30, 600, integer=True)
    say = progress or (lambda _text: None)
    if not study.is_dir():
        raise ShiftsimError(f"study folder {str(study)!r} does not exist"
                            if not study.exists() else
                            f"study folder {str(study)!r} is not a folder")
    _check_out(study, out)

    say("loading the study")
    results = store.load(study)
    v = build(view(results, baseline=baseline, level=float(level)))
    t0 = time.perf_counter()
    tmp = out.with_name(f".{out.name}{_TMP}{os.getpid()}-{os.urandom(3).hex()}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as exc:
        raise ShiftsimError(f"cannot write a report to {str(out)!r}: {exc.strerror or exc}"
                            ) from exc
    try:
        say("tables")
        _write_tables(v.tables, tmp / "tables")
        figs = build_figures(v, results, window=window, progress=lambda n: say(f"figure: {n}"))
        files = _save_figures(figs, tmp / "figures", dpi)
        say("findings")
        found = make_findings(v)
        doc = build_document(v, files, found, study)
        from .. import __version__

        stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        footer = (f"Generated by shiftsim {__version__} on {stamp} from `{study}` "
                  f"in {time.perf_counter() - t0:.1f} s.")
        (tmp / "index.html").write_text(render_html(doc, footer), encoding="utf-8")
        (tmp / "README.md").write_text(render_markdown(doc) + f"\n---\n{footer}\n",
                                       encoding="utf-8")
        counts = results.counts()
        meta = {
            "format": REPORT_FORMAT, "study": v.name, "study_dir": str(study),
            "baseline": v.baseline, "optimizers": v.arms, "scenarios": v.scenarios,
            "level": level, "window": window, "counts": counts, "generated": stamp,
            "shiftsim": __version__, "figures": [f.name for f in files],
            "tables": list(v.tables), "findings": found,
        }
        (tmp / REPORT_FILE).write_text(json.dumps(_plain(meta), indent=1) + "\n",
                                       encoding="utf-8")
        _replace(tmp, out)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
        if isinstance(exc, OSError):
            raise ShiftsimError(f"writing the report to {str(out)!r} failed: {exc}") from exc
        raise
    return out


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if hasattr(x, "item"):
        return x.item()
    return x


def describe(path: str | os.PathLike) -> str:
    """One line about a written report folder (what the CLI prints).

    >>> describe("/nonexistent")
    'no report in /nonexistent'
    """
    p = Path(path)
    try:
        meta = json.loads((p / REPORT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"no report in {p}"
    c = meta.get("counts") or {}
    runs = ", ".join(f"{n} {k}" for k, n in c.items() if n)
    n_fig, n_tab = len(meta.get("figures", [])), len(meta.get("tables", []))
    return (f"wrote {p / 'index.html'} and {p / 'README.md'}: {n_fig} figure"
            f"{'s' if n_fig != 1 else ''}, {n_tab} table{'s' if n_tab != 1 else ''}, baseline "
            f"{meta.get('baseline')} ({runs or 'no runs'})")



class _CallableModule(types.ModuleType):
    """``shiftsim.report`` is both this package and :func:`report`: importing a submodule
    (``shiftsim.report.tables``) rebinds the attribute ``shiftsim.report`` to the package, so the
    package itself calls :func:`report`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Path:
        return report(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
