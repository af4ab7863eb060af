"""Avalanche interoperability (the extra ``shiftsim[avalanche]``, Avalanche 0.6).

Both directions:

* **shiftsim scenario -> Avalanche benchmark.** :func:`to_avalanche` materialises a scenario's
  stream for one seed: one train experience per phase (that phase's batches, inputs after every
  shift, per-batch noise and gradual ramps included, labels as presented) and one test experience
  per regime (the held-out set shiftsim evaluates on). :func:`to_avalanche_online` splits the
  phases with Avalanche's ``split_online_stream`` into mini-experiences of one shiftsim batch
  each, in shiftsim's batch order. Any Avalanche strategy trains on them.
* **Avalanche strategy -> shiftsim learner.** :class:`AvalancheLearner` wraps a strategy class
  (Naive, Replay, EWC, LwF ...) as a :class:`~shiftsim.learner.Learner`: :func:`shiftsim.run`
  scores every batch with the strategy's model *before* the strategy trains on it, so
  strategies get the same online accuracy, recovery metrics and reports as optimizers.
* **Avalanche strategies in studies.** :func:`strategy_spec` describes a strategy (by import
  path, with JSON-serialisable arguments and a shiftsim optimizer) as a frozen, hashable spec
  that sits on a :class:`~shiftsim.study.Study`'s optimizer axis next to plain optimizers; each
  run builds an :class:`AvalancheLearner` from it.

Avalanche is imported on first use, never when shiftsim or this module is imported. Avalanche is
kept quiet: the strategies built here get ``EvaluationPlugin(loggers=[])``; their loggers write
nothing and nothing is downloaded (Avalanche itself writes ``~/.avalanche/config.json`` when it
is first imported on a machine).

Example (needs the extra; the README has the same, runnable)::

    import shiftsim as ss
    from shiftsim.integrations.avalanche import (AvalancheLearner, reservoir_replay,
                                                 strategy_spec, to_avalanche_online)

    sc = ss.label_flip_tasks(ss.data.digits(), rate=1.0, tasks=2, steps_per_task=100)
    bm = to_avalanche_online(sc, seed=0)            # 200 mini-experiences of 32 samples
    from avalanche.training import EWC              # after shiftsim loaded Avalanche (see below)

    res = ss.run(sc, AvalancheLearner(EWC, model=ss.models.mlp(), optimizer="sgd",
                                      ewc_lambda=10.0, mode="separate"), seed=0)
    res.summary()
    replay = strategy_spec(reservoir_replay, "sgd", mem_size=200)   # frozen, hashable, JSON
    study = ss.Study("replay", {"flip": sc}, ss.models.mlp(), seeds=3,
                     optimizers={"sgd": ss.optim.spec("sgd"), "replay": replay})

Engine cross-check (``tests/test_avalanche.py``): on the same batches in the same order, from
the same initial weights with the same optimizer, shiftsim's engine and Avalanche's ``Naive``
(over :func:`to_avalanche_online`, trained with ``shuffle=False``) give the same correct counts,
losses, final weights and held-out accuracies, bit for bit.

The package's modules, one job each: :mod:`~shiftsim.integrations.avalanche.loader` (importing
Avalanche, with the torchvision compatibility step a CPU build of torch needs),
:mod:`~shiftsim.integrations.avalanche.export` (scenario -> benchmark),
:mod:`~shiftsim.integrations.avalanche.learner` (strategy -> learner) and
:mod:`~shiftsim.integrations.avalanche.spec` (strategies in studies).
"""

from __future__ import annotations

from .export import to_avalanche, to_avalanche_online
from .learner import AvalancheLearner, reservoir_replay
from .loader import INSTALL_HINT, available, import_avalanche  # noqa: F401 (public constant)
from .spec import StrategySpec, strategy_spec

__all__ = ["AvalancheLearner", "StrategySpec", "available", "import_avalanche", "reservoir_replay",
           "strategy_spec", "to_avalanche", "to_avalanche_online"]

# a strategy spec names its strategy by import path, which is part of the run id: keep the
# path that reservoir_replay has always had
reservoir_replay.__module__ = __name__
