"""Sweep axes: learning-rate grids per optimizer, severity axes (flip rates, any builder), and
the seeds of a study or of its tuning (:func:`seed_list`).

An axis is a dict label -> value (a Scenario, an OptimizerSpec, a ModelSpec) that can also carry
extra labels per entry, e.g. the ``severity`` of each scenario; a :class:`~shiftsim.study.Study`
turns those into columns of the results. Plain dicts work as axes too. Axes combine with ``|``.

>>> import shiftsim as ss
>>> opts = lr_grid("sgdm", [0.01, 0.1]) | lr_grid("adam", [1e-3])
>>> list(opts)
['sgdm(lr=0.01)', 'sgdm(lr=0.1)', 'adam(lr=0.001)']
>>> flips = flip_rates(ss.data.digits(), [0, 0.5, 1], tasks=2, steps_per_task=50)
>>> list(flips), flips.labels["permute 50%"]
(['permute 0%', 'permute 50%', 'permute 100%'], {'flip_mode': 'permute', 'severity': 0.5})
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ..errors import ShiftsimError, SpecTypeError, check_range
from ..optim.registry import spec as optimizer_spec
from ..runspec import freeze_labels
from ..scenario import Scenario, label_flip_tasks


class Axis(dict):
    """A study axis: ``label -> value`` plus ``labels``: extra columns per entry.

    >>> a = Axis({"low": 1, "high": 2}, labels={"low": {"severity": 0.1}})
    >>> (a | Axis({"max": 3})).labels
    {'low': {'severity': 0.1}}
    """

    def __init__(self, items: Mapping[str, Any] | Iterable[tuple[str, Any]] = (),
                 labels: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        super().__init__(items)
        self.labels: dict[str, dict[str, Any]] = {}
        for key, extra in (labels or {}).items():
            if key not in self:
                raise ShiftsimError(f"axis labels given for {key!r}, which is not an entry; "
                                    f"entries: {', '.join(map(repr, self))}")
            self.labels[key] = dict(freeze_labels(extra))

    def __or__(self, other: Mapping[str, Any]) -> Axis:  # type: ignore[override]
        if not isinstance(other, Mapping):
            return NotImplemented
        both = [k for k in other if k in self]
        if both:
            raise ShiftsimError(f"axis entry {both[0]!r} appears in both axes; labels must be "
                                "unique")
        labels = {**self.labels, **getattr(other, "labels", {})}
        return Axis({**self, **other}, labels)

    def __ror__(self, other: Mapping[str, Any]) -> Axis:
        if not isinstance(other, Mapping):
            return NotImplemented
        return Axis(other) | self

    def __repr__(self) -> str:
        return f"Axis({dict.__repr__(self)})"


def _values(values: Any, what: str) -> list[Any]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise SpecTypeError(f"{what} must be a list of values, got {values!r}")
    out = list(values)
    if not out:
        raise ShiftsimError(f"{what} is empty; give at least one value")
    return out


def _unique_keys(keys: Sequence[str], what: str) -> None:
    seen: set[str] = set()
    for k in keys:
        if k in seen:
            raise ShiftsimError(f"{what} gives the label {k!r} twice; values must differ")
        seen.add(k)


def lr_grid(name: str | Mapping[str, Sequence[float]], lrs: Sequence[float] | None = None,
            **hparams: Any) -> Axis:
    """An optimizer axis over learning rates: ``{"sgdm(lr=0.01)": spec("sgdm", lr=0.01), ...}``.

    ``name`` is a registry name with ``lrs``, or a dict ``{name: lrs}`` for a grid per
    optimizer; other hyperparameters are fixed for every entry. Each entry gets an ``lr`` label.

    >>> g = lr_grid({"sgdm": [0.05], "adam": [1e-3, 3e-3]})
    >>> list(g), g["adam(lr=0.003)"].kwargs["lr"]
    (['sgdm(lr=0.05)', 'adam(lr=0.001)', 'adam(lr=0.003)'], 0.003)
    """
    if isinstance(name, Mapping):
        if lrs is not None:
            raise ShiftsimError("give lrs inside the dict {name: lrs}, not also as lrs=")
        if not name:
            raise ShiftsimError("lr_grid got an empty dict; give {optimizer name: [lrs]}")
        axis = Axis()
        for n, values in name.items():
            axis = axis | lr_grid(n, values, **hparams)
        return axis
    if not isinstance(name, str):
        raise SpecTypeError(f"lr_grid needs an optimizer registry name, got {name!r}")
    if lrs is None:
        raise ShiftsimError(f"lr_grid({name!r}) needs a list of learning rates")
    values = [float(check_range(v, f"lr_grid({name!r}) learning rate", 0, None))
              for v in _values(lrs, f"lr_grid({name!r}) learning rates")]
    keys = [f"{name}(lr={v:g})" for v in values]
    _unique_keys(keys, f"lr_grid({name!r})")
    return Axis({k: optimizer_spec(name, lr=v, **hparams) for k, v in zip(keys, values)},
                {k: {"lr": v} for k, v in zip(keys, values)})


def hparam_grid(name: str, **grid: Sequence[Any]) -> Axis:
    """An optimizer axis over the cartesian product of hyperparameter values.

    >>> list(hparam_grid("sgdm", lr=[0.01, 0.1], momentum=[0.9]))
    ['sgdm(lr=0.01, momentum=0.9)', 'sgdm(lr=0.1, momentum=0.9)']
    """
    if not grid:
        raise ShiftsimError(f"hparam_grid({name!r}) needs at least one hyperparameter list")
    names = list(grid)
    lists = [_values(grid[n], f"hparam_grid({name!r}) {n}") for n in names]
    items, labels = {}, {}
    for combo in itertools.product(*lists):
        hp = dict(zip(names, combo))
        key = f"{name}(" + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                     for k, v in hp.items()) + ")"
        if key in items:
            raise ShiftsimError(f"hparam_grid({name!r}) gives {key!r} twice; values must differ")
        items[key] = optimizer_spec(name, **hp)
        labels[key] = {k: v for k, v in hp.items()
                       if isinstance(v, (int, float, str, bool)) or v is None}
    return Axis(items, labels)


def severity_axis(build: Callable[[Any], Scenario], values: Iterable[Any],
                  key: str | Callable[[Any], str] = "{}", **labels: Any) -> Axis:
    """A scenario axis: ``build(value)`` for each severity value, labelled with ``severity``.

    ``key`` formats each entry's label (a format string or a function). Extra ``labels`` are
    added to every entry.

    >>> import shiftsim as ss
    >>> data = ss.data.digits()
    >>> rot = severity_axis(lambda a: ss.covariate_drift(data, [ss.Rotate(a)], 50), [15, 45],
    ...                     key="rotate {:g}", shift="rotate")
    >>> list(rot), rot.labels["rotate 45"]
    (['rotate 15', 'rotate 45'], {'severity': 45.0, 'shift': 'rotate'})
    """
    if not callable(build):
        raise SpecTypeError(f"severity_axis needs a function value -> Scenario, got {build!r}")
    vals = _values(values, "severity values")
    fmt = key.format if isinstance(key, str) else key
    keys = [str(fmt(v)) for v in vals]
    _unique_keys(keys, "severity_axis")
    items, extra = {}, {}
    for k, v in zip(keys, vals):
        sc = build(v)
        if not isinstance(sc, Scenario):
            raise SpecTypeError(f"severity_axis: build({v!r}) returned {type(sc).__name__}, "
                                "not a Scenario")
        items[k] = sc
        sev = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
        extra[k] = {"severity": sev, **labels}
    return Axis(items, extra)


def flip_rates(data: Any, rates: Iterable[float] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
               mode: str = "permute", tasks: int = 3, steps_per_task: int = 200,
               **scenario_kwargs: Any) -> Axis:
    """A severity axis of :func:`~shiftsim.scenario.label_flip_tasks` scenarios, one per flip
    rate: keys ``"permute 20%"``, labels ``severity`` (the rate) and ``flip_mode``.

    >>> import shiftsim as ss
    >>> ax = flip_rates(ss.data.digits(), [0.25], mode="other", tasks=2, steps_per_task=20)
    >>> list(ax), ax["other 25%"].total_steps
    (['other 25%'], 40)
    """
    return severity_axis(
        lambda r: label_flip_tasks(data, rate=r, mode=mode, tasks=tasks,
                                   steps_per_task=steps_per_task, **scenario_kwargs),
        [float(check_range(r, "flip rate", 0, 1)) for r in _values(rates, "flip rates")],
        key=lambda r: f"{mode} {100 * r:g}%", flip_mode=mode)


def views(scenarios: Mapping[str, Scenario] | Scenario | Sequence[Scenario]) -> Axis:
    """Each scenario in its plain and its real-time view (:mod:`shiftsim.realtime`): entries
    ``"<key>"`` (label ``view="plain"``) and ``"<key> (real-time)"`` (``view="real-time"``),
    the other labels kept. In the real-time view a learner of cost c trains on every c-th batch.

    >>> import shiftsim as ss
    >>> ax = views(flip_rates(ss.data.digits(), [1.0], tasks=2, steps_per_task=20))
    >>> list(ax), ax["permute 100% (real-time)"].realtime, ax.labels["permute 100%"]["view"]
    (['permute 100%', 'permute 100% (real-time)'], True, 'plain')
    """
    if isinstance(scenarios, Scenario):
        scenarios = {scenarios.name: scenarios}
    elif not isinstance(scenarios, Mapping):
        if isinstance(scenarios, (str, bytes)) or not isinstance(scenarios, Iterable):
            raise SpecTypeError(f"views needs a scenario, a list of scenarios or a dict name -> "
                                f"scenario, got {scenarios!r}")
        scenarios = list(scenarios)
        bad = next((sc for sc in scenarios if not isinstance(sc, Scenario)), None)
        if bad is not None:
            raise SpecTypeError(f"views needs scenarios, got {bad!r}")
        scenarios = {sc.name: sc for sc in scenarios}
    if not scenarios:
        raise ShiftsimError("views needs at least one scenario, got none")
    labels = getattr(scenarios, "labels", {})
    items, extra = {}, {}
    for key, sc in scenarios.items():
        if not isinstance(sc, Scenario):
            raise SpecTypeError(f"views needs scenarios, got {sc!r} for {key!r}")
        rt = f"{key} (real-time)"
        items[key], items[rt] = sc.replace(realtime=False), sc.replace(realtime=True)
        extra[key] = {**labels.get(key, {}), "view": "plain"}
        extra[rt] = {**labels.get(key, {}), "view": "real-time"}
    return Axis(items, extra)

def seed_list(seeds: Any, what: str = "seeds", first: int = 0) -> list[int]:
    """Seeds given as a count ``n`` (``first`` … ``first + n − 1``) or as a list of distinct
    non-negative integers; ``what`` names them in errors.

    >>> seed_list(3), seed_list([5, 1]), seed_list(2, "Tuning seeds", first=1_000_000)
    ([0, 1, 2], [5, 1], [1000000, 1000001])
    """
    if isinstance(seeds, bool) or isinstance(seeds, (str, bytes)) or not (
            isinstance(seeds, (int, Iterable)) or hasattr(seeds, "__index__")):
        raise SpecTypeError(f"{what} must be a count or a list of seeds, got {seeds!r}")
    if not isinstance(seeds, Iterable):
        if int(seeds) < 1:
            raise ShiftsimError(f"{what} must be a positive count or a list of seeds, got "
                                f"{seeds}")
        return [first + i for i in range(int(seeds))]
    out: list[int] = []
    for s in seeds:
        s = check_range(s, what, 0, integer=True)
        if s in out:
            raise ShiftsimError(f"{what}: seed {s} is listed twice")
        out.append(s)
    if not out:
        raise ShiftsimError(f"{what} is empty; give at least one seed")
    return out
