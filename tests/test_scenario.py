import json

import numpy as np
import pytest

import shiftsim as ss
from shiftsim.scenario import Scenario


def test_phase_table_and_boundaries(tiny_scenario):
    t = tiny_scenario.phase_table()
    assert t["start"].tolist() == [0, 30, 60] and t["end"].tolist() == [30, 60, 90]
    assert t["width"].tolist() == [0, 0, 10]
    assert t["label_kind"].tolist() == ["none", "concept", "none"]
    assert t["regime"].tolist() == [0, 1, 2]
    assert tiny_scenario.total_steps == 90 and tiny_scenario.boundaries == [0, 30, 60]


def test_describe_prints_every_phase(tiny_scenario, capsys):
    import io

    assert tiny_scenario.describe() is None  # printed once, not echoed again by a REPL
    out = capsys.readouterr().out
    buf = io.StringIO()
    tiny_scenario.describe(buf)
    assert buf.getvalue() == out
    for name in tiny_scenario.phase_names:
        assert name in out
    assert "gradual(10, linear)" in out and "batch 16" in out


def test_builders():
    d = ss.data.digits()
    sc = ss.label_flip_tasks(d, rate=0.6, mode="other", tasks=4, steps_per_task=20)
    assert len(sc.phases) == 4 and sc.regime_of == (0, 1, 2, 3)
    # other at 60 %: max(1 - ρ′, ρ′ / 9) ≈ 0.4 (ρ′ the realised per-class rate, ~0.6)
    assert sc.phase_table()["ceiling"].tolist() == pytest.approx([1.0, 0.4, 0.4, 0.4], abs=0.003)
    cd = ss.covariate_drift(d, [ss.Rotate(30), [ss.Contrast(0.5), ss.GaussianNoise(0.1)]], 25,
                            transition=ss.Gradual(5, "sigmoid"))
    assert [len(p.shifts) for p in cd.phases] == [0, 1, 2]
    assert cd.phases[1].transition == ss.Gradual(5, "sigmoid")
    rec = ss.recurring(d, [[], [ss.PixelPermutation(1.0)], [ss.LabelFlip(1.0)]], cycles=3,
                       steps_per_phase=10)
    assert rec.regime_of == (0, 1, 2) * 3
    assert rec.regime_phase == (0, 1, 2)


def test_repeat_by_name_reuses_the_regime():
    d = ss.data.digits()
    sc = Scenario(d, [ss.Phase(10, name="a"), ss.Phase(10, [ss.LabelFlip(1.0)], name="b"),
                      ss.Phase(10, repeat="b", name="b again")])
    assert sc.regime_of == (0, 1, 1)
    assert sc.ceiling(2) == 1.0 and sc.label_kind(2) == "concept"


def test_chance_and_shifted():
    d = ss.data.digits()
    shares = np.array(d.class_counts()) / len(d)
    sc = ss.label_flip_tasks(d, rate=1.0, tasks=3, steps_per_task=10)
    t = sc.phase_table()
    # permute at rate 1 moves every class to another: expected shares (N - n_c) / (N (C - 1))
    moved = (1 - shares) / 9
    assert t["chance"].tolist() == pytest.approx([shares.max(), moved.max(), moved.max()])
    assert t["chance_true"].tolist() == pytest.approx([shares.max()] * 3)
    assert t["shifted"].tolist() == [False, True, True]  # a new permutation per task
    # a class prior: chance is the largest prior share
    sc = Scenario(d, [ss.Phase(10), ss.Phase(10, [ss.ClassPrior((3,) + (1,) * 9)])])
    assert sc.chance(1) == pytest.approx(0.25)
    # no shift: flip rate 0, a repeat of the regime just left, the same rotation again
    assert ss.label_flip_tasks(d, 0.0, tasks=3, steps_per_task=5).phase_table()[
        "shifted"].tolist() == [False, False, False]
    sc = Scenario(d, [ss.Phase(5), ss.Phase(5, [ss.Rotate(30)]), ss.Phase(5, [ss.Rotate(30)]),
                      ss.Phase(5, [ss.Rotate(severity=2)]), ss.Phase(5, [ss.Rotate(45)]),
                      ss.Phase(5, [ss.PixelPermutation(0.5)]),
                      ss.Phase(5, [ss.PixelPermutation(0.5)]), ss.Phase(5, repeat=6),
                      ss.Phase(5, [ss.LabelFlip(1.0, "pair")]),
                      ss.Phase(5, [ss.LabelFlip(1.0, "pair")])])
    assert [sc.has_shift(k) for k in range(10)] == [
        False, True, False, False, True, True, True, False, True, False]


def test_json_round_trip(tiny_scenario):
    d = json.loads(json.dumps(tiny_scenario.to_dict()))
    again = Scenario.from_dict(d)
    assert again == tiny_scenario and again.to_dict() == tiny_scenario.to_dict()


def test_names_are_unique_and_descriptive():
    d = ss.data.digits()
    sc = ss.label_flip_tasks(d, 1.0, tasks=3, steps_per_task=5)
    assert len(set(sc.phase_names)) == 3
    with pytest.raises(ss.ShiftsimError, match="used twice"):
        Scenario(d, [ss.Phase(5, name="x"), ss.Phase(5, name="x")])


def test_gradual_probabilities():
    assert ss.Gradual(5).probabilities().tolist() == [0.2, 0.4, 0.6, 0.8, 1.0]
    p = ss.Gradual(100, "sigmoid").probabilities()
    assert p[0] == pytest.approx(0.1192, abs=1e-4) and p[50] == pytest.approx(0.5)


def test_a_phase_out_of_range_is_named():
    sc = ss.label_flip_tasks(ss.data.digits(), 1.0, tasks=3, steps_per_task=10)
    for call in (sc.chance, sc.shift_kind, sc.ceiling, sc.has_shift, sc.label_kind,
                 sc.concept, sc.shifts_of):
        for bad in (3, 99, -1):
            with pytest.raises(ss.ShiftsimError, match=rf"^phase {bad} is out of range: "
                               r"scenario 'flip-permute-1' has 3 phases \(0-2\)$"):
                call(bad)
    assert sc.shift_kind(2) == "LabelFlip(permute)" and sc.has_shift(np.int64(1))


def test_views_of_what_is_no_scenario_is_refused():
    from shiftsim.errors import SpecTypeError
    from shiftsim.study import views

    with pytest.raises(SpecTypeError, match=r"^views needs a scenario, a list of scenarios "
                                               r"or a dict name -> scenario, got 'x'$"):
        views("x")
    with pytest.raises(SpecTypeError, match=r"^views needs scenarios, got 3$"):
        views([3])
    with pytest.raises(ss.ShiftsimError, match=r"^views needs at least one scenario"):
        views({})
