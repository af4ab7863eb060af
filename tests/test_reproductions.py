"""The reproduction studies under scenarios/ follow the comparison protocol, and their checked-in
reports under reports/ are complete and say how to regenerate them.

The studies themselves take minutes to hours; these tests load their definitions (no run) and
read the checked-in reports.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from shiftsim.study import study_from_file

ROOT = Path(__file__).resolve().parents[1]
STUDIES = {  # scenario file -> report folder
    "tam_label_flip.py": "tam-label-flip",
    "momo_lr_robustness.py": "momo-lr-robustness",
    "adaptive_memory_drift.py": "adaptive-memory-drift",
    "robustness_league.py": "robustness-league",
    "flip_sweep.py": "flip-sweep",
}
NEEDS_FASHION = {"tam_label_flip.py"}


def _fashion_available() -> bool:
    import shiftsim as ss

    try:
        ss.data.fashion_mnist()
    except Exception:  # noqa: BLE001 - any reason: the Debian package is missing
        return False
    return True


@pytest.fixture(scope="module", params=sorted(STUDIES))
def study(request):
    if request.param in NEEDS_FASHION and not _fashion_available():
        pytest.skip("Fashion-MNIST is not installed (Debian's dataset-fashion-mnist)")
    return request.param, study_from_file(ROOT / "scenarios" / request.param)


def _decades(values) -> float:
    return math.log10(max(values) / min(values))


def test_every_optimizer_is_tuned_on_seeds_the_evaluation_never_sees(study):
    _, s = study
    assert s.tuning is not None and s.tuning.scope == "per_scenario"
    assert len(s.seeds) >= 10
    assert len(s.tuning.tuning_seeds()) >= 3
    assert not set(s.seeds) & set(s.tuning.tuning_seeds())
    for label, opt in s.optimizers.items():
        lrs = s.tuning.grid_of(label, opt)["lr"]
        assert len(lrs) >= 5 and _decades(lrs) >= 2 - 1e-9, (label, lrs)


def test_the_grids_widen_where_the_best_sits_at_an_edge(study):
    name, s = study
    if name == "momo_lr_robustness.py":  # the fixed 4-decade sweep is the experiment there
        for label, opt in s.optimizers.items():
            assert _decades(s.tuning.grid_of(label, opt)["lr"]) >= 4 - 1e-9
        return
    assert s.tuning.extend >= 1


def test_the_league_ranks_every_registered_optimizer():
    import shiftsim as ss

    s = study_from_file(ROOT / "scenarios" / "robustness_league.py")
    assert sorted(s.optimizers) == sorted(ss.optim.names())
    assert len(s.scenarios) == 22  # digits only here: see the file's docstring


@pytest.mark.parametrize("name", sorted(STUDIES.values()))
def test_each_checked_in_report_is_complete_and_regenerable(name):
    folder = ROOT / "reports" / name
    if not (folder / "README.md").is_file():
        pytest.fail(f"reports/{name} is not checked in")
    text = (folder / "README.md").read_text(encoding="utf-8")
    file = next(k for k, v in STUDIES.items() if v == name)
    assert f"shiftsim study scenarios/{file}" in text  # the regenerate command
    assert "**compute**" in text and "cores" in text  # how long, on which machine
    for f in ("index.html", "tables/tuning.csv", "tables/runs.csv", "tables/summary.csv"):
        assert (folder / f).is_file(), f
    runs = pd.read_csv(folder / "tables" / "runs.csv")
    assert set(runs["stage"]) == {"eval"}  # the report's tables use the evaluation runs
    assert runs.groupby(["scenario", "optimizer"])["seed"].nunique().min() >= 10
    tuning = pd.read_csv(folder / "tables" / "tuning.csv")
    assert len(tuning) == runs.groupby(["scenario", "optimizer"]).ngroups


def test_the_claims_index_links_every_reproduction():
    text = (ROOT / "reports" / "README.md").read_text(encoding="utf-8")
    for name in ("tam-label-flip", "momo-lr-robustness", "adaptive-memory-drift",
                 "robustness-league"):
        assert f"]({name}/README.md)" in text
    assert "not run yet" not in text
    assert "(reports/README.md)" in (ROOT / "README.md").read_text(encoding="utf-8")
