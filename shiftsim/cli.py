"""The command line: ``shiftsim run | study | report | list | demo``.

``shiftsim list scenarios`` lists a scenario library (:func:`scenarios_folder` says which).

Errors a user can cause are printed on one line (``error: ...``) with no traceback, and the exit
status is 2; nothing is written when the input is bad. Output into a pipe that closes early
(``shiftsim list scenarios | head -1``) ends the command quietly with status 141, as a program
killed by SIGPIPE (results are stored before anything is printed).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from .errors import ShiftsimError, check_range
from .pyfile import load_python_file, summary_line

EXIT_USAGE = 2
#: the status when standard output is a pipe closed by its reader (128 + SIGPIPE, as a shell
#: reports a program killed by it)
EXIT_PIPE = 141


def _integer(low: int) -> Callable[[str], int]:
    """An argparse type: the text as an integer >= ``low`` (checked by ``check_range``), or a
    usage error saying what is allowed (``expected a positive integer, got '0'``)."""
    def parse(text: str) -> int:
        try:
            return check_range(int(text), "value", low, integer=True)
        except (ValueError, ShiftsimError):
            what = "a positive integer" if low == 1 else "a non-negative integer"
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None

    return parse


_positive_int = _integer(1)
_seed = _integer(0)


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _gpus(text: str) -> float:
    """``--gpus-per-run``: a finite number >= 0 (fractions share a GPU)."""
    value = _float(text)
    if not (value >= 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a number >= 0 (fractions share a GPU), "
                                         f"got {text!r}")
    return value


# -- commands ------------------------------------------------------------------------------------

def _out_dir(path: str) -> Path:
    """``--out``, checked before any work: a writable folder, or one that can be created.

    A missing folder is created (as a study creates its results folder) and removed again,
    so that a path that cannot be made (``/proc/x``) fails now, not after the work, and a
    command that fails later leaves nothing behind; an existing one must take a file."""
    import tempfile

    from .store import check_out_dir

    p = check_out_dir(path, what="--out")
    missing = []
    q = p
    while not q.is_dir() and q.parent != q:
        missing.append(q)  # the deepest first
        q = q.parent
    if not missing:
        try:
            with tempfile.TemporaryFile(dir=p):
                pass
        except OSError as exc:
            raise ShiftsimError(f"--out {str(p)!r} is not writable (a file cannot be created "
                                f"there: {exc.strerror or exc})") from None
        return p
    check_out_dir(p, create=True, what="--out")
    for d in missing:
        try:
            d.rmdir()
        except OSError:  # made by someone else meanwhile: theirs to keep
            break
    return p


def cmd_run(args: argparse.Namespace) -> int:
    import pandas as pd

    from . import engine, models
    from .optim import spec
    from .scenario import Scenario

    out = _out_dir(args.out) if args.out else None
    ns = load_python_file(args.file, "scenario")
    scenario = ns["scenario"]
    if not isinstance(scenario, Scenario):
        raise ShiftsimError(f"{Path(args.file).name}: 'scenario' must be a shiftsim Scenario, got "
                            f"{type(scenario).__name__}")
    model = ns.get("model", models.mlp())
    hparams = {"lr": args.lr} if args.lr is not None else {}
    optimizer = spec(args.optimizer or ns.get("optimizer", "sgdm"), **hparams)
    result = engine.run(scenario, model, optimizer, seed=args.seed, device=args.device,
                        progress=not args.quiet, threads=args.threads)
    path = None
    if out is not None:  # stored before anything is printed: a closed pipe cannot lose it
        from .store import write_result

        path = write_result(out, result)
    summary = result.summary()
    print(f"{scenario.name}: {optimizer.label}, seed {args.seed}, {len(result.trace)} steps on "
          f"{result.info['device']} ({result.timings['ms_per_step']:.2f} ms/step)"
          + (f" — DIVERGED at step {result.diverged_step}" if result.diverged else ""))
    cols = [c for c in ("phase", "name", "steps_run", "online_acc", "online_acc_true",
                        "recovery_steps", "censored", "drop", "deficit", "heldout_acc")
            if c in summary.columns]
    with pd.option_context("display.width", 160, "display.max_columns", 20,
                           "display.float_format", "{:.3f}".format):
        print(summary[cols].to_string(index=False))
    if path is not None:
        print(f"wrote {path}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    if args.dir is not None and args.what != "scenarios":
        raise ShiftsimError(f"--dir applies to 'shiftsim list scenarios', not to {args.what}")
    if args.what == "optimizers":
        from .optim import REGISTRY

        width = max(len(n) for n in REGISTRY)
        for e in REGISTRY.values():
            print(f"{e.name:<{width}}  {e.summary}  [{e.paper}]")
    elif args.what == "shifts":
        from .shifts import SHIFT_TYPES

        width = max(len(n) for n in SHIFT_TYPES)
        for name, cls in SHIFT_TYPES.items():
            sev = ""
            if cls.severity_values:
                vals = ", ".join(f"{v:g}" for v in cls.severity_values)
                sev = f"  severity 1..5: {cls.severity_param} = {vals} ({cls.severity_source})"
            print(f"{name:<{width}}  [{cls.kind}] {cls.summary}{sev}")
    elif args.what == "datasets":
        print("digits         scikit-learn 8x8 digits, 1797 images, 10 classes (embedded default)")
        print("fashion_mnist  Fashion-MNIST 28x28, 60k+10k, from local IDX files "
              "(apt-get install dataset-fashion-mnist)")
        print("mnist1d        MNIST-1D, 40-point signals, generated offline "
              "(pip install 'shiftsim[mnist1d]')")
        print("synthetic      Gaussian clusters, any size (tests and scaling benchmarks)")
        print("cifar10        CIFAR-10 32x32 colour, 50k+10k, from its local python-version "
              "batch files")
        print("image_folder   your images, one folder per class (torchvision's ImageFolder "
              "layout)")
        print("from_dataset   any torchvision-style dataset (len, ds[i] -> (image, label))")
        print("from_tensors / from_numpy   your own arrays (labels: indices or names)")
    elif args.what == "scenarios":
        _list_scenarios(args.dir)
    else:  # models
        print("mlp     multi-layer perceptron (hidden=(256, 256), norm=None|'layer'|'group')")
        print("cnn     conv-pool blocks + MLP head, for images")
        print("resnet  small ResNet with GroupNorm, for images (GPU)")
        print("linear  multinomial logistic regression")
    return 0


#: the scenario library of a shiftsim checkout: the folder beside the package
LIBRARY = Path(__file__).resolve().parent.parent / "scenarios"


def scenarios_folder(folder: str | None = None) -> Path:
    """The folder ``shiftsim list scenarios`` lists: ``folder`` when given, else
    ``./scenarios`` when the current folder has one (your own library, or the checkout's when
    you work in it), else the ``scenarios/`` folder of the checkout this package runs from."""
    if folder is not None:
        p = Path(folder)
        if not p.is_dir():
            raise ShiftsimError(f"--dir {folder!r} is not a folder")
        return p
    here = Path("scenarios")
    if here.is_dir():
        return here
    if LIBRARY.is_dir():
        return LIBRARY
    raise ShiftsimError("no scenarios folder: none in the current folder and none beside the "
                        "shiftsim package (an installed package has none); pass --dir DIR")


def _list_scenarios(folder: str | None) -> None:
    """One line per ``*.py`` file of the scenarios folder: its path and the first sentence of
    its docstring."""
    root = scenarios_folder(folder)
    files = sorted(p for p in root.glob("*.py") if not p.name.startswith("_"))
    if not files:
        raise ShiftsimError(f"{str(root)!r} holds no scenario files (*.py)")
    cwd = Path.cwd()
    shown = [str(p.relative_to(cwd)) if p.is_absolute() and p.is_relative_to(cwd) else str(p)
             for p in files]
    width = max(len(s) for s in shown)
    for name, path in zip(shown, files):
        print(f"{name:<{width}}  {summary_line(path) or '(no docstring)'}")


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(_out_dir(args.out), quick=args.quick)


def cmd_study(args: argparse.Namespace) -> int:
    from .study import study_from_file

    out = _out_dir(args.out)
    study = study_from_file(args.file)
    result = study.run(out, workers=args.workers, backend=args.backend,
                       resume=not args.no_resume, progress=not args.quiet,
                       fleet=False if args.no_fleet else None, device=args.device,
                       gpus_per_run=args.gpus_per_run, deterministic=args.deterministic)
    return 0 if result is None or getattr(result, "ok", True) else 1


def cmd_report(args: argparse.Namespace) -> int:
    import time

    from .report import describe, report

    t0 = time.perf_counter()

    def stage(text: str) -> None:  # a large study's report takes a minute or more
        print(f"report: {text} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr,
              flush=True)

    show = not args.quiet and sys.stderr.isatty()  # a terminal: logs get the result line only
    path = report(args.dir, _out_dir(args.out), baseline=args.baseline,
                  progress=stage if show else None)
    print(f"{describe(path)} in {time.perf_counter() - t0:.1f} s")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line (no usage block) and exit with status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {message} (see '{self.prog} --help')", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="shiftsim", description="Online continual-learning "
                                "simulator: shift scenarios, optimizer studies, recovery reports.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           parser_class=_Parser)

    r = sub.add_parser("run", help="run one learner on a scenario file and print its summary")
    r.add_argument("file", help="a Python file defining `scenario` (and optionally `model`)")
    r.add_argument("--optimizer", help="registry name, e.g. sgdm, tam, adamw (default sgdm)")
    r.add_argument("--lr", type=_float, help="learning rate")
    r.add_argument("--seed", type=_seed, default=0)
    r.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    r.add_argument("--threads", type=_positive_int, default=None,
                   help="torch threads for the run (default: torch's setting); --threads 1 "
                        "gives bit for bit the trace a study stores for this run")
    r.add_argument("--out", metavar="OUT",
                   help="also store the run in the results folder OUT (as a study does): "
                        "OUT/runs/<run id>/ with spec.json, trace.parquet, evals.parquet and "
                        "summary.json")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("study", help="run a robustness study file (resumable)")
    s.add_argument("file", help="a Python file defining `study`")
    s.add_argument("--out", required=True, help="results folder")
    s.add_argument("--workers", type=_positive_int, default=None,
                   help="parallel runs (default: the number of cores; on CUDA 2 per GPU)")
    s.add_argument("--backend", choices=("local", "ray"), default="local")
    s.add_argument("--device", default="auto",
                   help="auto (default: CUDA when available), cpu, cuda, cuda:N; local workers "
                        "on CUDA take the GPUs round-robin")
    s.add_argument("--gpus-per-run", type=_gpus, default=0.0, metavar="F",
                   help="GPUs each run uses: on Ray what each task asks for (needed for CUDA "
                        "there); locally 1/F runs share a GPU (0.25: 4 workers per GPU)")
    s.add_argument("--deterministic", action="store_true",
                   help="torch's deterministic settings for every run (CUDA results that "
                        "repeat bit for bit; no effect on CPU results)")
    s.add_argument("--no-resume", action="store_true", help="redo runs that are already complete")
    s.add_argument("--no-fleet", action="store_true",
                   help="one learner at a time, bit-identical to `shiftsim run` (default: runs "
                        "of one scenario and model share a vectorized fleet)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_study)

    rep = sub.add_parser("report", help="write a comparative report (HTML + Markdown) of a study")
    rep.add_argument("dir", help="a study results folder")
    rep.add_argument("--out", required=True, help="report folder")
    rep.add_argument("--baseline", help="optimizer to compare the others against")
    rep.add_argument("--quiet", action="store_true",
                     help="no stage lines (loading, tables, each figure) on a terminal's "
                          "standard error")
    rep.set_defaults(func=cmd_report)

    ls = sub.add_parser("list", help="list optimizers, shifts, datasets, models or scenarios")
    ls.add_argument("what", choices=("optimizers", "shifts", "datasets", "models", "scenarios"))
    ls.add_argument("--dir", help="scenarios: the folder to list (default: ./scenarios, else "
                                  "the scenarios/ folder of the shiftsim checkout)")
    ls.set_defaults(func=cmd_list)

    d = sub.add_parser("demo", help="the quickstart: a few optimizers on digits, a table, a plot")
    d.add_argument("--out", default="demo-out", help="folder for the demo's outputs")
    d.add_argument("--quick", action="store_true", help="shorter streams (for tests)")
    d.set_defaults(func=cmd_demo)
    return p


def _stdout_closed() -> bool:
    """Whether standard output is a pipe (or socket) whose reader has gone: what a
    BrokenPipeError must come from to end the command quietly (another pipe, such as a
    worker's, is an error). True where it cannot be told (no file descriptor)."""
    import os
    import select
    import stat

    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return True
    try:
        if not (stat.S_ISFIFO(os.fstat(fd).st_mode) or stat.S_ISSOCK(os.fstat(fd).st_mode)):
            return False
        poll = select.poll()
        poll.register(fd, select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poll.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll(): trust the error
        return True


def _silence_stdout() -> None:
    """Point standard output at /dev/null, so that Python's flush at exit does not fail on
    the closed pipe again (the pattern the Python docs give for SIGPIPE)."""
    import os

    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a reader that went away shows here, not at exit
        return code
    except BrokenPipeError:
        if not _stdout_closed():
            raise
        _silence_stdout()
        return EXIT_PIPE
    except ShiftsimError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
