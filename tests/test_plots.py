"""shiftsim.plots: the data helpers against hand-computed values, and each figure's content
(lines, intervals, markers, annotations) read back from the matplotlib objects."""

from __future__ import annotations

import io
import math

import matplotlib
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from shiftsim import metrics, plots
from shiftsim.errors import ShiftsimError

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def make_traces(seeds=3, steps=(30, 30), optimizers=("sgdm", "tam"), severities=(0.5,),
                seed=0):
    """Random per-step traces: run_id, optimizer, seed, severity, step, phase, n, correct."""
    rng = np.random.default_rng(seed)
    rows = []
    for sev in severities:
        for o in optimizers:
            for s in range(seeds):
                step = 0
                for k, L in enumerate(steps):
                    for _ in range(L):
                        n = int(rng.integers(8, 17))
                        rows.append({"run_id": f"{o}-{sev}-{s}", "optimizer": o, "seed": s,
                                     "severity": sev, "step": step, "phase": k, "n": n,
                                     "correct": int(rng.integers(0, n + 1))})
                        step += 1
    return pd.DataFrame(rows)


def ref_trailing(correct, n, phase, w):
    """ā_t (docs/metrics.md) by its definition: the last w steps of the same phase."""
    out = np.empty(len(correct))
    for t in range(len(correct)):
        u = t
        while u - 1 >= 0 and phase[u - 1] == phase[t] and t - (u - 1) < w:
            u -= 1
        out[t] = correct[u:t + 1].sum() / n[u:t + 1].sum()
    return out


# -- data helpers -------------------------------------------------------------------------------

def test_smoothed_accuracy_is_the_within_phase_trailing_mean_of_each_run():
    tr = make_traces(seeds=2, steps=(25, 17, 9)).sample(frac=1.0, random_state=1)  # shuffled
    got = plots.smoothed_accuracy(tr, window=7)
    assert got.index.equals(tr.index)
    for _, g in tr.groupby("run_id"):
        g = g.sort_values("step")
        want = ref_trailing(g["correct"].to_numpy(float), g["n"].to_numpy(float),
                            g["phase"].to_numpy(), 7)
        np.testing.assert_allclose(got.loc[g.index].to_numpy(), want, rtol=0, atol=1e-12)
        np.testing.assert_allclose(metrics.trailing_accuracy(g, window=7), want, atol=1e-12)


def test_recovery_frame_aligns_every_shift_with_the_steps_before():
    tr = pd.DataFrame({"run_id": "a", "step": range(9), "phase": [0, 0, 0, 1, 1, 1, 2, 2, 2],
                       "n": 10, "correct": [5, 6, 7, 1, 2, 3, 4, 8, 9]})
    f = plots.recovery_frame(tr, window=2, before=2)
    assert f["shift"].tolist() == [1] * 5 + [2] * 5
    assert f["since_shift"].tolist() == [-2, -1, 0, 1, 2] * 2
    # ā with window 2 within the phase
    np.testing.assert_allclose(f["acc"], [0.55, 0.65, 0.1, 0.15, 0.25, 0.15, 0.25, 0.4, 0.6,
                                          0.85])


def test_mean_band_is_a_student_t_interval_over_the_rows():
    rng = np.random.default_rng(3)
    d = pd.DataFrame({"opt": np.repeat(["a", "b"], 20), "t": np.tile(np.repeat([0, 1], 10), 2),
                      "y": rng.normal(size=40)})
    band = plots.mean_band(d, "t", "y", ["opt"], level=0.9)
    for (o, t), g in d.groupby(["opt", "t"]):
        row = band[(band["opt"] == o) & (band["t"] == t)].iloc[0]
        lo, hi = stats.t.interval(0.9, len(g) - 1, loc=g["y"].mean(), scale=stats.sem(g["y"]))
        assert row["count"] == 10
        assert row["mean"] == pytest.approx(g["y"].mean(), abs=1e-12)
        assert (row["low"], row["high"]) == (pytest.approx(lo, abs=1e-12),
                                             pytest.approx(hi, abs=1e-12))


def test_palette_is_okabe_ito_in_the_given_order_and_stable():
    pal = plots.optimizer_palette(["tam", "sgdm", "adam", "tam"])
    assert list(pal) == ["tam", "sgdm", "adam"]
    assert list(pal.values()) == ["#0072B2", "#E69F00", "#009E73"]
    assert plots.optimizer_palette(["tam", "sgdm", "adam"]) == pal
    many = plots.optimizer_palette([f"o{i}" for i in range(18)])
    assert len(set(many.values())) == 18


def test_format_severity():
    assert plots.format_severity(0.2, "flip rate") == "20 %"
    assert plots.format_severity(1.0, "label noise fraction") == "100 %"
    assert plots.format_severity(30.0, "angle") == "30"
    assert plots.format_severity(float("nan")) == "n/a"
    assert plots.format_severity("mild") == "mild"


# -- figures ------------------------------------------------------------------------------------

def lines_by_label(ax):
    return {ln.get_label(): ln for ln in ax.get_lines() if not ln.get_label().startswith("_")}


def test_recovery_curves_draw_the_mean_over_seeds_per_optimizer_and_facet():
    tr = make_traces(seeds=3, steps=(30, 30), severities=(0.5, 1.0))
    rec = pd.DataFrame({"optimizer": ["sgdm"] * 3 + ["tam"] * 3, "severity": 1.0, "phase": 1,
                        "recovery_steps": [4.0, 8.0, np.nan] * 2,
                        "censored": [False, False, True] * 2})
    rec = pd.concat([rec, rec.assign(severity=0.5)])
    rec.loc[rec["optimizer"] == "tam", "censored"] = True
    fig = plots.recovery_curves(tr, col="severity", window=5, before=5, col_label="flip rate",
                                recovery=rec, hue_order=["tam", "sgdm"])
    axes = [a for a in fig.axes if a.get_visible()]
    assert [a.get_title() for a in axes] == ["flip rate = 50 %", "flip rate = 100 %"]
    assert axes[0].get_xlabel() == "steps since shift"
    # the sgdm line at since_shift = 3: the mean over seeds of ā at step 33
    frame = plots.recovery_frame(tr, window=5, before=5)
    want = frame[(frame["optimizer"] == "sgdm") & (frame["severity"] == 1.0)
                 & (frame["since_shift"] == 3)]["acc"].mean()
    line = lines_by_label(axes[1])["sgdm"]
    x, y = line.get_data()
    assert list(x[:2]) == [-5, -4] and y[list(x).index(3)] == pytest.approx(want, abs=1e-12)
    assert list(lines_by_label(axes[1])) == ["tam", "sgdm"]
    # the median recovery (4, 8, inf -> 8) is a dotted line; tam's is undefined: none
    dotted = [ln.get_xdata()[0] for ln in axes[1].get_lines() if ln.get_linestyle() == ":"]
    assert dotted == [8.0]
    assert fig.legends and [t.get_text() for t in fig.legends[0].get_texts()] == ["tam", "sgdm"]


def test_recovery_curves_need_a_shift():
    tr = make_traces(seeds=1, steps=(20,))
    with pytest.raises(ShiftsimError, match="at least two phases"):
        plots.recovery_curves(tr)


def test_stream_accuracy_shades_phases_and_marks_runs_that_stopped():
    tr = make_traces(seeds=2, steps=(20, 20))
    tr = tr[~((tr["run_id"] == "tam-0.5-1") & (tr["step"] > 25))]  # "diverged" at step 26
    fig = plots.stream_accuracy(tr, window=5)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["phase 0", "phase 1"]
    assert len(ax.patches) == 1  # phase 1 shaded
    marks = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert [tuple(m.get_offsets()[0])[0] for m in marks] == [25.0]


def test_severity_curves_recovery_medians_censoring_and_diverged_marks():
    d = pd.DataFrame({
        "optimizer": ["a"] * 6 + ["b"] * 6, "severity": [0.5, 0.5, 0.5, 1.0, 1.0, 1.0] * 2,
        "phase": 1,
        "recovery_steps": [3, 5, np.nan, 8, np.nan, np.nan, 2, 4, 6, 10, 12, np.nan],
        "censored": [False, False, True, False, True, True] + [False] * 5 + [True],
        "status": ["ok"] * 11 + ["diverged"],
    })
    fig = plots.severity_curves(d, x_label="flip rate")
    ax = fig.axes[0]
    lines = lines_by_label(ax)
    ya = lines["a"].get_ydata()
    assert ya[0] == 5.0 and math.isnan(ya[1])  # 3, 5, inf -> 5; 8, inf, inf -> undefined
    assert list(lines["b"].get_ydata()) == [4.0, 12.0]  # 10, 12, inf -> 12
    ticks = [t.get_text() for t in ax.get_yticklabels()]
    assert ticks[-1] == "censored"
    assert ax.get_xlabel() == "flip rate" and ax.get_ylabel() == "recovery time (steps)"
    top = ax.get_yticks()[-1]
    points = [c for c in ax.collections if isinstance(c, PathCollection)]
    offsets = np.concatenate([c.get_offsets() for c in points])
    # an open circle (undefined median of a at 1.0) and triangles in the censored strip
    assert (np.isclose(offsets[:, 1], top)).sum() >= 4
    xs = [c for c in points if np.allclose(c.get_facecolor()[0][:3], 0)]
    assert len(xs) == 1  # the diverged run's point
    with pytest.raises(ShiftsimError, match="censored"):
        plots.severity_curves(d.drop(columns="censored"))


def test_severity_curves_accuracy_mean_and_t_interval():
    d = pd.DataFrame({"optimizer": "a", "severity": [0.2] * 3 + [0.8] * 3,
                      "online_acc": [0.7, 0.8, 0.75, 0.4, 0.5, 0.3]})
    fig = plots.severity_curves(d, y="online_acc", level=0.95)
    ax = fig.axes[0]
    np.testing.assert_allclose(lines_by_label(ax)["a"].get_ydata(), [0.75, 0.4])
    seg = [c for c in ax.collections if isinstance(c, matplotlib.collections.LineCollection)]
    lows = sorted(s[0][1] for s in seg[0].get_segments())
    lo, _ = stats.t.interval(0.95, 2, loc=0.4, scale=stats.sem([0.4, 0.5, 0.3]))
    assert lows[0] == pytest.approx(lo, abs=1e-12)


def test_severity_heatmap_annotates_values_censored_and_missing_cells():
    d = pd.DataFrame({"optimizer": ["a"] * 4 + ["b"] * 4 + ["c"] * 2,
                      "severity": [0.5, 0.5, 1.0, 1.0] * 2 + [0.5, 1.0], "phase": 1,
                      "recovery_steps": [3, 4, np.nan, np.nan, 5, 6, 7, np.nan, np.nan, np.nan],
                      "censored": [False, False, True, True, False, False, False, True,
                                   False, False]})
    ax = plots.severity_heatmap(d, value="recovery_steps", x_label="flip rate").axes[0]
    texts = [t.get_text() for t in ax.texts]
    # a: median(3, 4) = 3.5, (inf, inf) censored; b: 5.5, median(7, inf) undefined; c: n/a
    assert texts == ["3.5", "censored", "5.5", "censored", "n/a", "n/a"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["50 %", "100 %"]
    acc = pd.DataFrame({"optimizer": ["a", "a", "b"], "severity": [0.5, 0.5, 0.5],
                        "online_acc": [0.5, 0.7, 0.9]})
    ax = plots.severity_heatmap(acc).axes[0]
    assert [t.get_text() for t in ax.texts] == ["0.600", "0.900"]


def test_accuracy_matrices_average_over_seeds():
    ev = pd.DataFrame({"optimizer": "sgdm", "run_id": np.repeat(["r0", "r1"], 4),
                       "step": [5, 5, 10, 10] * 2, "phase": [0, 0, 1, 1] * 2,
                       "regime": [0, 1, 0, 1] * 2, "phase_end": True,
                       "accuracy": [0.9, 0.1, 0.6, 0.8, 0.7, 0.3, 0.4, 1.0]})
    fig = plots.accuracy_matrices(ev)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["0.80", "0.20", "0.50", "0.90"]
    assert ax.get_ylabel() == "after phase" and ax.get_xlabel() == "evaluated on regime"
    with pytest.raises(ShiftsimError, match="phase-end"):
        plots.accuracy_matrices(ev.assign(phase_end=False))


def test_accuracy_matrices_do_not_draw_the_figure_per_panel(monkeypatch):
    """seaborn's heatmap drew the whole figure once per panel (to check its tick labels): the
    league report's 53-panel figure took 84 s; the panels are plain matplotlib now."""
    import matplotlib.figure

    draws = []
    real = matplotlib.figure.Figure.draw
    monkeypatch.setattr(matplotlib.figure.Figure, "draw",
                        lambda self, r: (draws.append(1), real(self, r))[1])
    ev = pd.DataFrame({"optimizer": np.repeat(["a", "b", "c"], 8), "scenario": "s",
                       "step": 0, "phase": [0, 0, 1, 1] * 6, "regime": [0, 1, 0, 1] * 6,
                       "accuracy": np.linspace(0, 1, 24), "phase_end": True,
                       "task": np.tile(np.repeat(["x", "y"], 4), 3)})
    fig = plots.accuracy_matrices(ev, row="task")
    assert draws == [] and len(fig.axes) == 7  # 2 rows x 3 optimizers and the colour bar
    ax = fig.axes[0]
    # panel (x, a): rows 0-3 of linspace(0, 1, 24), i / 23; panel (y, c): rows 20-23
    assert [t.get_text() for t in ax.texts] == ["0.00", "0.04", "0.09", "0.13"]
    assert [t.get_color() for t in ax.texts] == ["w"] * 4  # light text on dark cells
    assert [t.get_text() for t in fig.axes[5].texts] == ["0.87", "0.91", "0.96", "1.00"]
    assert [t.get_color() for t in fig.axes[5].texts] == [".15"] * 4  # dark on light


def test_diagnostics_one_panel_per_recorded_quantity():
    tr = make_traces(seeds=2, steps=(15, 15))
    tr["diag_damping"] = np.where(tr["optimizer"] == "tam", 0.5, np.nan)
    tr["diag_unused"] = np.nan
    assert plots.diagnostic_columns(tr) == ["diag_damping"]
    fig = plots.diagnostics(tr, window=1)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "TAM damping (1 + cos)/2"
    assert list(lines_by_label(ax)) == ["tam"]
    np.testing.assert_allclose(lines_by_label(ax)["tam"].get_ydata(), 0.5)
    with pytest.raises(ShiftsimError, match="no diag_"):
        plots.diagnostics(tr.drop(columns=["diag_damping"]))


def test_every_figure_saves_as_png_and_svg():
    """Regression: a colorbar made before switching to constrained layout crashed savefig."""
    tr = make_traces(seeds=2, steps=(20, 20), severities=(0.5, 1.0))
    tr["diag_beta"] = 0.9
    ph = pd.DataFrame({"optimizer": ["sgdm", "tam"] * 2, "severity": [0.5, 0.5, 1.0, 1.0],
                       "phase": 1, "recovery_steps": [3.0, np.nan, 5.0, 6.0],
                       "censored": [False, True, False, False], "online_acc": 0.5})
    ev = pd.DataFrame({"optimizer": "sgdm", "step": [5, 5, 10, 10], "phase": [0, 0, 1, 1],
                       "regime": [0, 1, 0, 1], "accuracy": 0.5, "phase_end": True})
    figs = [plots.recovery_curves(tr, col="severity"), plots.stream_accuracy(tr),
            plots.severity_curves(ph), plots.severity_heatmap(ph, value="recovery_steps"),
            plots.severity_heatmap(ph), plots.accuracy_matrices(ev), plots.diagnostics(tr)]
    for fig in figs:
        for fmt in ("png", "svg"):
            buf = io.BytesIO()
            fig.savefig(buf, format=fmt)
            assert len(buf.getvalue()) > 1000


@pytest.mark.parametrize("call, message", [
    (lambda: plots.recovery_curves([1, 2]), "needs a pandas DataFrame, got list"),
    (lambda: plots.recovery_curves(pd.DataFrame({"step": [0]})),
     r"missing \['phase', 'n', 'correct'\]"),
    (lambda: plots.recovery_curves(make_traces(seeds=2).drop(columns="optimizer")),
     r"missing \['optimizer'\]"),  # several runs: which is which?
    (lambda: plots.stream_accuracy(pd.DataFrame({"step": [0], "phase": 0, "n": 1,
                                                 "correct": 1}), hue="opt"), r"missing \['opt'\]"),
    (lambda: plots.severity_heatmap(pd.DataFrame({"severity": [0.5]})),
     r"missing \['optimizer', 'online_acc'\]"),
    (lambda: plots.recovery_curves(make_traces(seeds=1), col="nope"), r"missing \['nope'\]"),
])
def test_bad_input_names_what_is_missing(call, message):
    with pytest.raises(ShiftsimError, match=message):
        call()


# -- one run: RunResult.plot() and the figures on a single run's trace -------------------------

@pytest.fixture(scope="module")
def one_run():
    import shiftsim as ss

    sc = ss.label_flip_tasks(ss.data.digits(), 1.0, tasks=3, steps_per_task=80)
    return ss.run(sc, ss.models.mlp(hidden=(32,)), ss.optim.spec("sgdm", lr=0.05), seed=0)


def test_figures_take_one_runs_trace(one_run):
    tr = one_run.trace
    assert "optimizer" not in tr.columns
    fig = plots.stream_accuracy(tr, one_run.phases, window=10)
    ax = fig.axes[0]
    (line,) = ax.get_lines()[-1:]
    acc = plots.smoothed_accuracy(tr, 10).to_numpy()
    np.testing.assert_allclose(line.get_ydata(), acc)  # the run's own curve, no band
    assert not fig.legends and ax.get_legend() is None
    fig = plots.recovery_curves(tr, window=10, before=0, recovery=one_run.summary(window=10))
    assert not fig.legends and len(fig.axes) == 1
    # two shifts averaged: the mean of their smoothed accuracies at each step since the shift
    rf = plots.recovery_frame(tr, window=10)
    curve = [ln for ln in fig.axes[0].get_lines() if len(ln.get_xdata()) == 80][0]
    np.testing.assert_allclose(curve.get_ydata(), rf.groupby("since_shift")["acc"].mean())


def test_run_plot_marks_each_recovery(one_run):
    summary = one_run.summary()
    fig = one_run.plot()
    ax = fig.axes[0]
    assert ax.get_title() == "flip-permute-1, sgdm, seed 0"
    dots = [ln for ln in ax.get_lines() if ln.get_marker() == "o"]
    shifted = summary[summary["phase"] >= 1]
    want = sorted(zip(shifted["start"] + shifted["recovery_steps"], shifted["target"]))
    got = sorted((float(d.get_xdata()[0]), float(d.get_ydata()[0])) for d in dots)
    np.testing.assert_allclose(np.array(got), np.array(want, dtype=float))
    texts = [t.get_text() for t in ax.texts]
    for r in shifted["recovery_steps"]:
        assert f"{r:g} steps" in texts
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    want_legend = ["recovery target", "onset of the dip", "recovered"] if shifted[
        "dipped"].any() else ["recovery target", "recovered"]
    assert legend == want_legend
    # the phases are shaded and named as in stream_accuracy
    assert {"clean", "flip permute 100%", "flip permute 100% (2)"} <= set(texts)


def test_run_plot_uses_recovery_v2_columns_when_present(one_run):
    s = one_run.summary()
    s["onset_steps"] = [np.nan, 5.0, np.nan]
    s["dipped"] = [False, True, False]
    s.loc[1, ["recovery_steps", "censored"]] = [np.nan, True]
    s["collapsed"] = [False, True, False]
    fig = one_run.plot(summary=s)
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert "collapsed, not recovered" in texts and "no dip" in texts
    onset = [ln for ln in ax.get_lines() if ln.get_marker() == "v"]
    assert [float(ln.get_xdata()[0]) for ln in onset] == [80 + 5]
    assert not [ln for ln in ax.get_lines() if ln.get_marker() == "o"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["recovery target",
                                                                    "onset of the dip"]
