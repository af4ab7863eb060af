"""The fleet: learner-steps per second of run_fleet() against the same members run one by one.

For each fleet size K, the K members (seeds 0..K-1, optimizers cycling through --optimizers)
run on one label-flip scenario of the digits data (batch 32, held-out evaluations every 100
steps) once as one fleet (shiftsim.fleet.run_fleet) and once as K sequential shiftsim.run()
calls, round by round interleaved; the ratio is the median of the per-round ratios
(sequential time / fleet time). Both sides use the same torch thread count (default 1).
Goal on a 2-core CPU: >= 8x at K = 32. "sequential" is run() as users call it, which for a
ReLU MLP is itself the stacked program with one member (no autograd graph); "vs eager" also
compares with K runs of run(vectorized=False), the plain module + autograd + optimizer loop.

    python benchmarks/fleet.py [--ks 8,32,128] [--steps 300] [--hidden 64]
                               [--optimizers sgdm] [--rounds 3] [--threads 1] [--device cpu]

--study1000 instead times, end to end, a 1,000-run study (5 optimizers x 5 flip rates x 40
seeds, digits MLP, 3,000 steps per run) run with study.run(..., fleet=True) into a temporary
folder (the project's goal: < 5 minutes on 2 cores); --sequential-sample N also times N of its
runs one by one (the in-process executor) and extrapolates the non-fleet time of the whole
study.

    python benchmarks/fleet.py --study1000 [--hidden 64] [--workers 2] [--sequential-sample 10]

--peak instead measures how close one fleet comes to the matmul peak: a fleet of K members
(default 32, MLP 64-128-128-10, batch 32, 400 steps, optimizers sgdm,tam,adam,momo) against
torch.bmm running the same matmuls (forward, weight gradients, input gradients: the model's
arithmetic, evaluations not counted) back to back, rounds interleaved in one process (a
round's peak: the fastest of five runs of 40 steps' matmuls, since on a shared machine the
slower ones measure other work); it prints both rates in GFLOP/s and the fraction of the peak
(the project's goal: >= 50 %), then (on the CPU) where one more run's step goes: the model,
each optimizer group, and the rest. Where run_fleet's default cuts the fleet into chunks that run
one after another (one torch thread: shiftsim.fleet.chunks, 4 chunks of 8 here), the same
members as one program (chunk_members=K) are timed beside it, in the same rounds, and the bmm
peak is measured on the chunks' shapes too (each chunk's members batched, chunk after chunk;
the faster shape counts: measured, 4 x 8 members ran the matmuls 2-7 % faster than 32 at once).
With two torch threads (--threads 2) the default runs those chunks two at a time, each on a
Python thread of one torch thread (lanes); the peak is then also measured that way (the chunks'
matmuls dealt to two such threads started together), and the breakdown's times add up over the
lanes (against twice the wall time).

    python benchmarks/fleet.py --peak [--k 32] [--hidden 128,128] [--steps 400]
                               [--optimizers sgdm,tam,adam,momo] [--threads 2] [--rounds 5]

--peak --processes N instead splits the K members into N near-equal fleets, each in its own
spawn-started process with one torch thread, all started together each round (a round's time
is the wall time until the last one finishes), against torch.bmm with N threads (--threads
overrides) running all K members' matmuls: N cores used either way. This is how a study runs
such members on N cores (``Study.run(workers=N, fleet=True)``: one-thread worker processes;
32 runs of one scenario and model on 2 workers become 2 fleets of 16, ``plan_fleets``). The
members' traces are the same bits as in one fleet (a member's trace does not depend on its
fleet's other members). No breakdown by piece in this mode.

    python benchmarks/fleet.py --peak --processes 2 [--k 32] [--rounds 5]

--denormals flush runs the fleets with subnormal floats flushed to zero
(``SHIFTSIM_DENORMALS=flush``; :func:`shiftsim.runtime.denormals`). Over the 400 steps of
--peak they change little. Over 3,000 steps (``--steps 3000``), on a 2-core Intel Xeon on
2026-12-07 with IEEE subnormals, this fleet's optimizer groups took 4-5x longer a step than
over 400 steps (one thread: SGD-momentum 0.64 against 0.13 ms, MoMo 1.49 against 0.22; the
model's step unchanged), and its whole step took about twice as long as with them flushed (one
thread: 5.59-5.74 against 2.71-2.73 ms, two runs of one round each way, the same traces; see
docs/performance.md, "Subnormal floats"); --study1000 took 76.8 / 81.6 s against 49.6 / 52.0 s
flushed (``SHIFTSIM_DENORMALS=flush python benchmarks/fleet.py --study1000``). On a 2-core AMD
EPYC they cost nothing measurable: 3,000 steps, one thread, two runs each way alternating, the
four groups by piece 0.15-0.30 ms a step with IEEE subnormals, 0.15-0.29 flushed (the whole
step 3.89 / 4.29 against 3.52 / 3.92 ms: not resolved on that shared machine).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import threading
import time
from collections.abc import Callable

import torch
from _common import interleaved, median, paired_ratios

import shiftsim as ss
from shiftsim.fleet import chunk_bounds, run_fleet
from shiftsim.runtime import DENORMAL_MODES, DENORMALS_ENV, denormal_mode, torch_threads

STUDY_OPTIMIZERS = ("sgdm", "adam", "tam", "adamem_sgd", "momo")
STUDY_RATES = (0.0, 0.25, 0.5, 0.75, 1.0)


def _hidden(text: str) -> tuple[int, ...]:
    return tuple(int(h) for h in text.split(",") if h)


def bench_fleets(args: argparse.Namespace) -> None:
    data = ss.data.digits()
    sc = ss.label_flip_tasks(data, rate=0.5, tasks=2, steps_per_task=args.steps // 2)
    model = ss.models.mlp(hidden=_hidden(args.hidden))
    opts = [ss.optim.spec(o) for o in args.optimizers.split(",")]
    # warm-up: first calls pay for kernel selection and allocator growth
    run_fleet(sc, model, [(o, 0) for o in opts], device=args.device)
    ss.run(sc, model, opts[0], seed=0, device=args.device)
    steps = sc.total_steps
    print(f"fleet vs sequential — digits, mlp{_hidden(args.hidden)}, optimizers "
          f"{args.optimizers}, batch {sc.batch_size}, {steps} steps, {args.rounds} interleaved "
          f"rounds, device {args.device}, torch threads {torch.get_num_threads()}")
    print(f"  {'K':>4}  {'fleet steps/s':>14}  {'sequential steps/s':>19}  {'ratio':>6}  "
          f"{'vs eager':>13}  rounds")
    for k in (int(x) for x in args.ks.split(",")):
        members = [(opts[i % len(opts)], i) for i in range(k)]
        times = interleaved({
            "fleet": lambda m=members: run_fleet(sc, model, m, device=args.device),
            "sequential": lambda m=members: [ss.run(sc, model, o, seed=s, device=args.device)
                                             for o, s in m],
            "eager": lambda m=members: [ss.run(sc, model, o, seed=s, device=args.device,
                                               vectorized=False) for o, s in m],
        }, rounds=args.rounds, warmup=0)
        ratios = paired_ratios(times["sequential"], times["fleet"])
        eager = median(paired_ratios(times["eager"], times["fleet"]))
        fleet_rate = k * steps / median(times["fleet"])
        seq_rate = k * steps / median(times["sequential"])
        print(f"  {k:>4}  {fleet_rate:>14.0f}  {seq_rate:>19.0f}  {median(ratios):>5.2f}x  "
              f"{eager:>12.2f}x  " + " ".join(f"{r:.2f}" for r in ratios), flush=True)


def _layers(model: torch.nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in model.modules()
            if isinstance(m, torch.nn.Linear)]


def _model_flops(layers: list[tuple[int, int]], k: int, batch: int) -> int:
    """Multiply-adds x 2 of one training step of k members: forward, weight gradients and input
    gradients (none for the first layer: the inputs need no gradient)."""
    return sum(2 * k * batch * i * o * (2 if n == 0 else 3) for n, (i, o) in enumerate(layers))


def _matmuls(layers: list[tuple[int, int]], k: int, batch: int) -> Callable[[], None]:
    """The training step's matmuls alone, with torch.bmm on tensors shaped as the fleet's."""
    ws = [torch.randn(k, o, i) for i, o in layers]
    acts = [torch.randn(k, i, batch) for i, _ in layers]
    grads = [torch.randn(k, o, batch) for _, o in layers]

    def run() -> None:
        for n, (w, a, g) in enumerate(zip(ws, acts, grads)):
            torch.bmm(w, a)
            torch.bmm(g, a.transpose(1, 2))
            if n:
                torch.bmm(w.transpose(1, 2), g)
    return run


def _peak_setup(args: argparse.Namespace
                ) -> tuple[ss.Scenario, ss.models.ModelSpec,
                           list[tuple[ss.optim.OptimizerSpec, int]]]:
    """The peak fleet's scenario, model and members (optimizers cycling, seeds 0..K-1)."""
    data = ss.data.digits()
    sc = ss.label_flip_tasks(data, rate=0.5, tasks=2, steps_per_task=args.steps // 2)
    model = ss.models.mlp(hidden=_hidden(args.hidden))
    opts = [ss.optim.spec(o) for o in args.optimizers.split(",")]
    return sc, model, [(opts[i % len(opts)], i) for i in range(args.k)]


def _peak_worker(conn: object, args: argparse.Namespace, lo: int, hi: int) -> None:
    """One process of --processes: members lo..hi-1 as one fleet, one torch thread; runs it once
    (warm-up), then once per "go", answering with the seconds it took."""
    torch.set_num_threads(1)
    sc, model, members = _peak_setup(args)
    members = members[lo:hi]
    run_fleet(sc, model, members, device=args.device)
    conn.send("ready")  # type: ignore[attr-defined]
    while conn.recv() == "go":  # type: ignore[attr-defined]
        t0 = time.perf_counter()
        run_fleet(sc, model, members, device=args.device)
        conn.send(time.perf_counter() - t0)  # type: ignore[attr-defined]


class _Processes:
    """--processes: the members split into near-equal fleets, one spawn-started process each;
    calling it runs them all at once and returns when the last is done."""

    def __init__(self, args: argparse.Namespace, n: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        bounds = [args.k * i // n for i in range(n + 1)]
        self.sizes = [b - a for a, b in zip(bounds, bounds[1:])]
        self.pipes, self.procs, self.last = [], [], [0.0] * n
        for lo, hi in zip(bounds, bounds[1:]):
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=_peak_worker, args=(theirs, args, lo, hi), daemon=True)
            proc.start()
            self.pipes.append(mine)
            self.procs.append(proc)
        for pipe in self.pipes:
            if pipe.recv() != "ready":
                raise RuntimeError("a fleet process failed to start")

    def __call__(self) -> None:
        for pipe in self.pipes:
            pipe.send("go")
        self.last = [pipe.recv() for pipe in self.pipes]

    def close(self) -> None:
        for pipe in self.pipes:
            pipe.send("stop")
        for proc in self.procs:
            proc.join(timeout=30)


#: the bmm peak of a --peak round: the fastest of BMM_CHUNKS back-to-back runs of BMM_REPS
#: steps' matmuls (on a shared machine a slower run is other work's, not the matmuls')
BMM_CHUNKS, BMM_REPS = 5, 40


def peak(args: argparse.Namespace) -> None:
    sc, model, members = _peak_setup(args)
    layers = _layers(model.build(sc.data, seed=0))
    steps, batch = sc.total_steps, sc.batch_size
    flops = _model_flops(layers, args.k, batch)
    chunks, reps = BMM_CHUNKS, BMM_REPS
    procs = _Processes(args, args.processes) if args.processes > 1 else None
    own: list[list[float]] = []
    best: list[float] = []
    # run_fleet's default may cut the fleet into chunks that run one after another (one torch
    # thread, CPU: shiftsim.fleet.chunks); then the peak is also measured on the chunks' shapes
    # (batched over each chunk's members, chunk after chunk; with lanes, also two chunks at
    # once as the lanes run them), the fastest counting
    sizes, lanes = _chunk_sizes(args, sc, model, members, procs)
    shapes = [[_matmuls(layers, args.k, batch)]]
    if len(sizes) > 1:
        shapes.append([_matmuls(layers, n, batch) for n in sizes])

    def fleet() -> None:
        if procs is None:
            run_fleet(sc, model, members, device=args.device)
        else:
            procs()
            own.append(procs.last)

    def one_program() -> None:
        run_fleet(sc, model, members, device=args.device, chunk_members=len(members))

    def bmm() -> None:
        """The round's peak: the fastest of ``chunks`` back-to-back runs of ``reps`` sets, in
        each shape (all members in one batch; each chunk's members, chunk after chunk; with
        lanes, the chunks in as many one-thread Python threads at once)."""
        rates = []
        for shape in shapes:
            for _ in range(chunks):
                t0 = time.perf_counter()
                for mm in shape:
                    for _ in range(reps):
                        mm()
                rates.append(flops * reps / (time.perf_counter() - t0) / 1e9)
        if lanes > 1:  # the chunks' matmuls as the lanes run them: side by side, one thread each
            for _ in range(chunks):
                rates.append(flops * reps / _in_lanes(shapes[-1], lanes, reps) / 1e9)
        best.append(max(rates))
    parts = len(sizes) if procs is None else 1
    timed = {"fleet": fleet, "bmm": bmm}
    if parts > 1:  # the same members as one stacked program
        timed["one program"] = one_program
    try:
        times = interleaved(timed, rounds=args.rounds, warmup=1)
    finally:
        if procs is not None:
            procs.close()
    fleet = [flops * steps / t / 1e9 for t in times["fleet"]]
    bmm = best[-args.rounds:]  # (the warm-up round's dropped)
    fractions = [f / b for f, b in zip(fleet, bmm)]
    dims = "-".join(str(d) for d in [layers[0][0]] + [o for _, o in layers])
    where = (f"torch threads {torch.get_num_threads()}" if procs is None else
             f"as {args.processes} fleets of {'/'.join(map(str, procs.sizes))} members in as "
             f"many processes of one torch thread; bmm with {torch.get_num_threads()} threads")
    print(f"fleet vs bmm peak — K={args.k} MLPs {dims}, batch {batch}, {steps} steps, "
          f"optimizers {args.optimizers}, {where}, {args.rounds} interleaved rounds, "
          f"subnormals {denormal_mode()}")
    print(f"  model arithmetic {flops * steps / 1e9:.2f} GFLOP per fleet run "
          f"({flops / 1e6:.1f} MFLOP per step)")
    batched = f"batched over all {args.k} members" + (
        f" or over each chunk's ({'/'.join(map(str, sorted(set(sizes))))})"
        + (f", chunk after chunk or {lanes} chunks at once on as many Python threads of one "
           "torch thread" if lanes > 1 else "") + ", the fastest"
        if len(sizes) > 1 else "")
    print(f"  fleet {median(fleet):.1f} GFLOP/s ({median(times['fleet']) / steps * 1e3:.2f} ms "
          f"per step, evaluations included); bmm {median(bmm):.1f} GFLOP/s (each round's "
          f"fastest of {chunks} runs of {reps} steps' matmuls, {batched})")
    print(f"  fraction of the bmm peak: {median(fractions):.0%} (rounds: "
          + " ".join(f"{f:.0%}" for f in fractions) + ")  (goal >= 50 %)"
          + (f"; run_fleet's default: {parts} chunks of members, "
             + (f"{lanes} at once (lanes of one torch thread)" if lanes > 1
                else "one after another") if parts > 1 else ""))
    if parts > 1:
        whole = [flops * steps / t / 1e9 / b for t, b in zip(times["one program"], bmm)]
        print(f"  the same fleet as one program (chunk_members={args.k}): "
              f"{median(times['one program']) / steps * 1e3:.2f} ms per step, "
              f"{median(whole):.0%} of the bmm peak (rounds: "
              + " ".join(f"{f:.0%}" for f in whole) + ")")
    if procs is not None:
        each = [median([r[j] for r in own[1:]]) / steps * 1e3 for j in range(args.processes)]
        print("  each process's own time (ms per step, median): "
              + ", ".join(f"{t:.2f}" for t in each))
    elif args.device == "cpu":
        breakdown(sc, model, members)


def _chunk_sizes(args: argparse.Namespace, sc: ss.Scenario, model: ss.models.ModelSpec,
                 members: list[tuple[ss.optim.OptimizerSpec, int]],
                 procs: _Processes | None) -> tuple[list[int], int]:
    """The member counts of the chunks run_fleet's default runs, and how many at once: in this
    process (what a run reports), or in each --processes child (one thread each)."""
    if procs is None:
        info = run_fleet(sc, model, members, device=args.device)[0].info["fleet"]
        n = info["chunks"]
        bounds = [round(i * args.k / n) for i in range(n + 1)]
        return [b - a for a, b in zip(bounds, bounds[1:])], info["lanes"]
    if args.device != "cpu":
        return procs.sizes, 1
    net = model.build(sc.data, seed=0)
    member_bytes = sum(p.numel() * p.element_size() for p in net.parameters())
    return [b - a for n in procs.sizes for a, b in chunk_bounds(n, member_bytes, 1)], 1


def _in_lanes(shape: list[Callable[[], None]], lanes: int, reps: int) -> float:
    """Seconds for ``reps`` runs of every chunk's matmuls, the chunks dealt round-robin to
    ``lanes`` Python threads of one torch thread each, all started together."""
    start = threading.Barrier(lanes + 1)

    def lane(mine: list[Callable[[], None]]) -> None:
        torch.set_num_threads(1)
        start.wait()
        for mm in mine:
            for _ in range(reps):
                mm()

    with torch_threads(1):
        threads = [threading.Thread(target=lane, args=(shape[i::lanes],)) for i in range(lanes)]
        for t in threads:
            t.start()
        start.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        return time.perf_counter() - t0


def breakdown(sc: ss.Scenario, model: ss.models.ModelSpec,
              members: list[tuple[ss.optim.OptimizerSpec, int]]) -> None:
    """Where one fleet run's step goes (CPU: every operation finishes before the clock reads):
    the model's forward and backward, each optimizer group's update, and the rest (held-out
    evaluation, batches, the loop), timing the stacked model's and the groups' steps during
    one more run."""
    from shiftsim.fleet import learner as fleet_learner
    from shiftsim.fleet import model as fleet_model

    spent: dict[str, float] = {}
    lock = threading.Lock()  # lanes time their pieces at once

    def timing(fn: Callable[..., object], label: Callable[[object], str]) -> Callable[..., object]:
        def timed(self: object, *args: object, **kwargs: object) -> object:
            t0 = time.perf_counter()
            out = fn(self, *args, **kwargs)
            key = label(self)
            with lock:
                spent[key] = spent.get(key, 0.0) + time.perf_counter() - t0
            return out
        return timed

    def group_name(g: object) -> str:
        fn = g.rule.update  # type: ignore[attr-defined]
        return f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__qualname__} ({g.stop - g.start})"  # type: ignore[attr-defined]

    patched = [(fleet_model.StackedModel, "step", lambda m: "model"),
               (fleet_learner._Group, "step", group_name)]
    saved = [getattr(cls, name) for cls, name, _ in patched]
    for cls, name, label in patched:
        setattr(cls, name, timing(getattr(cls, name), label))
    try:
        t0 = time.perf_counter()
        lanes = run_fleet(sc, model, members)[0].info["fleet"]["lanes"]
        total = (time.perf_counter() - t0) * lanes  # lanes: their threads' time together
    finally:
        for (cls, name, _), fn in zip(patched, saved):
            setattr(cls, name, fn)
    steps = sc.total_steps
    parts = ", ".join(f"{k} {v / steps * 1e3:.2f}" for k, v in spent.items())
    rest = total - sum(spent.values())
    unit = "ms per step" if lanes == 1 else \
        f"ms per step summed over the {lanes} lanes, the total {lanes} x the wall time"
    print(f"  one more run, timed by piece ({unit}): total {total / steps * 1e3:.2f}; "
          f"{parts}; evaluation, batches and the loop {rest / steps * 1e3:.2f}")


def study1000(args: argparse.Namespace) -> None:
    data = ss.data.digits()
    tasks = 5
    scenarios = ss.study.flip_rates(data, list(STUDY_RATES), tasks=tasks,
                                    steps_per_task=args.steps // tasks)
    study = ss.Study("study1000", scenarios=scenarios, model=ss.models.mlp(
        hidden=_hidden(args.hidden)), optimizers=list(STUDY_OPTIMIZERS), seeds=40)
    steps = next(iter(scenarios.values())).total_steps
    print(f"{study} — digits, mlp{_hidden(args.hidden)}, {steps} steps per run, "
          f"workers {args.workers}, device {args.device}")
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        report = study.run(out, workers=args.workers, device=args.device, progress=False,
                           fleet=True)
        wall = time.perf_counter() - t0
        runs = ss.store.load(out).runs
    print(f"  fleet=True: {wall:.1f} s end to end ({wall / 60:.2f} min) for {report.done} runs "
          f"({len(study) * steps / wall:.0f} learner-steps/s); {len(runs)} runs in the store, "
          f"{report.diverged} diverged, {report.failed} failed  (goal < 300 s)")
    if args.sequential_sample:
        sample = study.grid()[:: len(study) // args.sequential_sample][: args.sequential_sample]
        t0 = time.perf_counter()
        for spec in sample:
            ss.study.execute(spec, device=args.device, threads=1)
        per_run = (time.perf_counter() - t0) / len(sample)
        est = per_run * len(study) / args.workers
        print(f"  without the fleet: {per_run:.2f} s per run (sample of {len(sample)}, one "
              f"thread) -> about {est:.0f} s for the study on {args.workers} workers "
              f"(extrapolated), {est / wall:.1f}x the fleet's time")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ks", default="8,32,128")
    ap.add_argument("--steps", type=int, default=None,
                    help="steps per run (default 300; 3000 with --study1000)")
    ap.add_argument("--hidden", default=None,
                    help="MLP hidden widths, e.g. 64 or 256,256 (default 64; 128,128 with --peak)")
    ap.add_argument("--optimizers", default=None, help="comma-separated registry names "
                    "(default sgdm; sgdm,tam,adam,momo with --peak)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default 1; with --processes N, N for the bmm)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--study1000", action="store_true")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--sequential-sample", type=int, default=0)
    ap.add_argument("--peak", action="store_true")
    ap.add_argument("--k", type=int, default=32, help="fleet size for --peak")
    ap.add_argument("--processes", type=int, default=1,
                    help="--peak: the members as this many one-thread fleet processes")
    ap.add_argument("--denormals", choices=DENORMAL_MODES, default=None,
                    help="subnormal floats kept (ieee) or flushed to zero (flush) in the runs "
                         "(default: $SHIFTSIM_DENORMALS, else ieee)")
    args = ap.parse_args()
    if args.denormals:  # the runs read it, here and in the --processes workers
        os.environ[DENORMALS_ENV] = args.denormals
    if args.processes < 1 or args.processes > args.k:
        ap.error(f"--processes must be between 1 and --k ({args.k}), got {args.processes}")
    if args.processes > 1 and not args.peak:
        ap.error("--processes goes with --peak")
    torch.set_num_threads(args.threads or (args.processes if args.processes > 1 else 1))
    args.hidden = args.hidden or ("128,128" if args.peak else "64")
    args.optimizers = args.optimizers or ("sgdm,tam,adam,momo" if args.peak else "sgdm")
    if args.peak:
        args.steps = args.steps or 400
        peak(args)
    elif args.study1000:
        args.steps = args.steps or 3000
        study1000(args)
    else:
        args.steps = args.steps or 300
        bench_fleets(args)


if __name__ == "__main__":
    main()
