"""shiftsim scenario -> Avalanche benchmark: :func:`to_avalanche`, :func:`to_avalanche_online`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from ...errors import SpecTypeError
from ...runtime import resolve_device
from ...scenario import Scenario
from ...stream import Stream
from .loader import import_avalanche


def _dataset(x: torch.Tensor, y: torch.Tensor, **attributes: torch.Tensor) -> Any:
    """An Avalanche classification dataset over tensors: items are ``(x, y, task_label=0)``.

    ``TaskAwareSupervisedClassificationDataset`` (what Avalanche's own benchmarks build) rather
    than the plain ``ClassificationDataset``, because LwF and other plugins read
    ``dataset.task_set``. ``attributes`` become data attributes (``dataset.<name>``) that are not
    part of the items.
    """
    from avalanche.benchmarks.utils import ConstantSequence, DataAttribute, TaskLabels
    from avalanche.benchmarks.utils.classification_dataset import (
        TaskAwareSupervisedClassificationDataset,
    )

    n = int(y.shape[0])
    data_attributes = [DataAttribute(y.tolist(), "targets"),
                       TaskLabels(ConstantSequence(0, n))]
    data_attributes += [DataAttribute(v.tolist(), name) for name, v in attributes.items()]
    return TaskAwareSupervisedClassificationDataset(
        [torch.utils.data.TensorDataset(x, y)], data_attributes=data_attributes)


def _materialise(scenario: Scenario, seed: int, device: str | torch.device
                 ) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]]]:
    """The stream of ``(scenario, seed)`` batch by batch, as shiftsim's engine sees it, on CPU:
    per phase x, y, y_true, sample_index, step, is_new; per regime the held-out x, y, y_true."""
    if not isinstance(scenario, Scenario):
        raise SpecTypeError(f"expected a Scenario, got {type(scenario).__name__}")
    stream = Stream(scenario, seed, resolve_device(device))
    parts: list[dict[str, list[torch.Tensor]]] = [
        {k: [] for k in ("x", "y", "y_true", "sample_index", "step", "is_new")}
        for _ in scenario.phases]
    for batch in stream:  # the engine's order: phase by phase, step by step, same noise draws
        p = parts[batch.phase]
        p["x"].append(batch.x.cpu())
        p["y"].append(batch.y.cpu())
        p["y_true"].append(batch.y_true.cpu())
        p["sample_index"].append(batch.index.cpu())
        p["step"].append(torch.full((batch.x.shape[0],), batch.step, dtype=torch.int64))
        p["is_new"].append(batch.is_new.cpu().to(torch.int64))
    phases = [{k: torch.cat(v) for k, v in p.items()} for p in parts]
    y_true_eval = stream.y_eval_cpu
    tests = []
    for r in range(scenario.num_regimes):
        hx, hy = stream.heldout(r)
        tests.append({"x": hx.cpu(), "y": hy.cpu(), "y_true": y_true_eval})
    return phases, tests


def _benchmark(scenario: Scenario, seed: int, device: str | torch.device) -> Any:
    from avalanche.benchmarks.scenarios import benchmark_from_datasets

    phases, tests = _materialise(scenario, seed, device)
    train = [_dataset(p["x"], p["y"], targets_true=p["y_true"], sample_index=p["sample_index"],
                      step=p["step"], is_new=p["is_new"]) for p in phases]
    test = [_dataset(t["x"], t["y"], targets_true=t["y_true"]) for t in tests]
    return benchmark_from_datasets(train=train, test=test)


def to_avalanche(scenario: Scenario, seed: int = 0, *, device: str | torch.device = "cpu") -> Any:
    """``scenario``'s stream for run ``seed`` as an Avalanche 0.6 benchmark (a ``CLScenario``).

    * ``train_stream``: one experience per phase holding that phase's ``steps x batch_size``
      samples in shiftsim's order, as the engine presents them: inputs after the phase's shifts
      (per-batch noise and gradual ramps included, so a sample drawn twice appears twice, with
      its own noise), labels after label shifts.
    * ``test_stream``: one experience per regime, the held-out set shiftsim evaluates on (inputs
      shifted as the regime shifts them, labels shifted by concept label shifts only).

    Items are ``(x, y, 0)`` (task label 0). Each dataset also carries data attributes that are
    not part of the items: ``targets_true`` (the dataset's original labels) and, for the train
    experiences, ``sample_index`` (the index into the training set), ``step`` (shiftsim's step)
    and ``is_new`` (1: drawn from the phase's regime, 0: from the previous one during a ramp).
    The stream is drawn on ``device`` (the same seed and device as :func:`shiftsim.run` give the
    same samples); the tensors are stored on the CPU. Memory: the whole stream is materialised,
    ``total_steps x batch_size`` inputs.

    Example (needs the extra)::

        bm = to_avalanche(ss.label_flip_tasks(ss.data.digits(), tasks=2), seed=0)
        for exp in bm.train_stream:
            strategy.train(exp)
            strategy.eval(bm.test_stream)
    """
    import_avalanche()
    return _benchmark(scenario, seed, device)


def to_avalanche_online(scenario: Scenario, seed: int = 0, *, device: str | torch.device = "cpu",
                        access_task_boundaries: bool = False) -> Any:
    """The online version of :func:`to_avalanche`: ``train_stream`` yields one
    mini-experience per shiftsim batch, holding exactly that batch's samples, in shiftsim's order.

    Built with Avalanche's ``split_online_stream`` at the scenario's batch size with a fixed
    ``seed`` and ``shuffle=False``: its shuffle cannot reproduce shiftsim's batch order (a
    random permutation of the whole phase, with samples reused across passes and per-batch
    noise), so each phase's experience is materialised in shiftsim's batch order by
    :func:`to_avalanche` and split without shuffling. Mini-experience ``t`` therefore holds the
    samples of shiftsim's step ``t`` (its ``dataset.step`` attribute says so). The
    mini-experiences are ``OnlineCLExperience`` objects whose ``origin_experience`` is the
    phase, with ``is_first_subexp`` / ``is_last_subexp`` on the first / last batch of each
    phase (Avalanche 0.6's splitter sets ``is_last_subexp`` only on a short final
    mini-experience, so shiftsim sets it on the last batch);
    ``access_task_boundaries`` is passed to ``split_online_stream`` (False: strategies do not see
    the boundaries, as in shiftsim). ``test_stream`` is the per-regime held-out stream.

    The batches within a mini-experience are Avalanche's business: train with
    ``train_mb_size=scenario.batch_size`` for one update per shiftsim batch (and
    ``strategy.train(exp, shuffle=False)`` to keep the samples' order inside the batch).
    """
    import_avalanche()
    from avalanche.benchmarks.scenarios import CLScenario
    from avalanche.benchmarks.scenarios.online import (
        FixedSizeExperienceSplitter,
        split_online_stream,
    )

    bm = _benchmark(scenario, seed, device)

    def split(exp: Any, size: int) -> Iterator[Any]:
        # Avalanche's own splitter, unshuffled; it marks is_last_subexp only on a short final
        # mini-experience, so the last one of every phase is marked here
        pending = None
        for sub in FixedSizeExperienceSplitter(exp, size, shuffle=False, drop_last=False,
                                               access_task_boundaries=access_task_boundaries,
                                               seed=seed):
            if pending is not None:
                yield pending
            pending = sub
        if pending is not None:
            pending.is_last_subexp = True
            yield pending

    online = split_online_stream(bm.train_stream, experience_size=scenario.batch_size,
                                 shuffle=False, drop_last=False, experience_split_strategy=split,
                                 access_task_boundaries=access_task_boundaries, seed=seed)
    online.name = "train"
    return CLScenario([online, bm.test_stream])
