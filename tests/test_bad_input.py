"""Malformed inputs: each raises a clear error naming the value and what is allowed; the CLI
prints it on one line without a traceback, exits with status 2 and writes nothing."""

import dataclasses
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import shiftsim as ss
from shiftsim import realtime
from shiftsim.errors import ShiftsimError
from shiftsim.shifts import shift_from_dict

D = ss.data.digits()
TAB = ss.data.synthetic(n=100, dim=4, classes=3)


def _scenario(**kw):
    args = {"data": D, "phases": [ss.Phase(10)], "batch_size": 8}
    args.update(kw)
    return ss.Scenario(**args)


CASES = [
    ("flip rate above 1", lambda: ss.LabelFlip(1.5), r"LabelFlip\.rate must be in \[0, 1\], got 1\.5"),
    ("flip rate below 0", lambda: ss.LabelFlip(-0.1), r"\[0, 1\], got -0\.1"),
    ("flip rate not a number", lambda: ss.LabelFlip("high"), r"must be a number, got 'high'"),
    ("unknown flip mode", lambda: ss.LabelFlip(0.5, "swap"),
     r"unknown flip mode 'swap'; allowed: 'permute', 'other', 'uniform', 'pair'"),
    ("zero steps", lambda: ss.Phase(0), r"Phase\.steps must be a positive integer, got 0"),
    ("negative steps", lambda: ss.Phase(-5), r"got -5"),
    ("fractional steps", lambda: ss.Phase(2.5), r"Phase\.steps must be a positive integer, got 2\.5"),
    ("batch larger than the data", lambda: _scenario(batch_size=2000),
     r"batch_size 2000 is larger than the training set of 'digits' \(1437 samples\)"),
    ("zero batch size", lambda: _scenario(batch_size=0), r"batch_size must be a positive integer, got 0"),
    ("eval_size larger than held-out", lambda: _scenario(eval_size=5000),
     r"eval_size 5000 is larger than the held-out set of 'digits' \(360 samples\)"),
    ("negative eval_every", lambda: _scenario(eval_every=-1), r"eval_every must be a non-negative integer"),
    ("no phases", lambda: _scenario(phases=[]), r"non-empty list of phases"),
    ("not a phase", lambda: _scenario(phases=[10]), r"Phase objects, got 10"),
    ("not a dataset", lambda: ss.Scenario("digits", [ss.Phase(5)]),
     r"must be a shiftsim Dataset .*got str"),
    ("unknown optimizer", lambda: ss.optim.spec("sgdx"),
     r"unknown optimizer 'sgdx'; allowed: 'sgd', 'sgdm'"),
    ("unknown hyperparameter", lambda: ss.optim.spec("adam", lrr=0.1),
     r"unknown hyperparameter 'lrr' for optimizer 'adam'; allowed: .*lr"),
    ("negative learning rate", lambda: ss.optim.spec("sgdm", lr=-1),
     r"learning rate lr must be >= 0, got -1"),
    ("non-finite learning rate", lambda: ss.optim.spec("sgdm", lr=float("nan")),
     r"lr must be finite, got nan"),
    # torch's optimizers: checked at spec time, not when a study builds them
    ("adam betas above 1", lambda: ss.optim.spec("adam", betas=(1.5, 0.9)),
     r"^adam\.betas\[0\] must be in \[0, 1\), got 1\.5$"),
    ("adamw beta2 of 1", lambda: ss.optim.spec("adamw", betas=(0.9, 1.0)),
     r"^adamw\.betas\[1\] must be in \[0, 1\), got 1\.0$"),
    ("betas not a pair", lambda: ss.optim.spec("adam", betas=0.9),
     r"^adam\.betas must be a pair of numbers, got 0\.9$"),
    ("sgdm momentum above 1", lambda: ss.optim.spec("sgdm", momentum=2.0),
     r"^sgdm\.momentum must be in \[0, 1\), got 2\.0$"),
    ("negative momentum", lambda: ss.optim.spec("sgdm", momentum=-0.1),
     r"^sgdm\.momentum must be in \[0, 1\), got -0\.1$"),
    ("dampening above 1", lambda: ss.optim.spec("sgdm", dampening=1.5),
     r"^sgdm\.dampening must be in \[0, 1\], got 1\.5$"),
    ("nesterov with dampening", lambda: ss.optim.spec("nesterov", dampening=0.5),
     r"^nesterov: Nesterov momentum needs momentum > 0 and dampening 0, got momentum=0\.9, "
     r"dampening=0\.5$"),
    ("negative eps", lambda: ss.optim.spec("adam", eps=-1e-8),
     r"^adam\.eps must be in \[0, inf\], got -1e-08$"),
    ("negative weight decay", lambda: ss.optim.spec("adamw", weight_decay=-0.01),
     r"^adamw\.weight_decay must be in \[0, inf\], got -0\.01$"),
    ("rmsprop alpha above 1", lambda: ss.optim.spec(torch.optim.RMSprop, alpha=1.5),
     r"^RMSprop\.alpha must be in \[0, 1\], got 1\.5$"),
    ("rprop etas reversed", lambda: ss.optim.spec("torch.optim.Rprop", etas=(1.2, 0.5)),
     r"^Rprop\.etas must be \(decrease, increase\) with 0 < decrease < 1 < increase"),
    ("shiftsim optimizer momentum above 1", lambda: ss.optim.spec("tam", momentum=2.0),
     r"^tam: momentum must be in \[0, 1\), got 2\.0$"),
    # a momentum of 1 never forgets a gradient: refused as torch's SGD momentum and Adam's betas
    ("tam momentum of 1", lambda: ss.optim.spec("tam", momentum=1.0),
     r"^tam: momentum must be in \[0, 1\), got 1\.0$"),
    ("momo beta of 1", lambda: ss.optim.spec("momo", beta=1.0),
     r"^momo: beta must be in \[0, 1\), got 1\.0$"),
    ("learning rate in a list", lambda: ss.optim.spec("sgdm", lr=[0.1]),
     r"^lr must be a number, got \[0\.1\]$"),
    # import paths and classes that name no optimizer: refused by spec, not inside a run
    ("optimizer path to a module", lambda: ss.optim.spec("os:path"),
     r"^optimizer 'os:path' is a module, not an optimizer; allowed: a registry name, a "
     r"torch\.optim\.Optimizer subclass or a factory function params -> optimizer$"),
    ("optimizer path to a class that is not an optimizer", lambda: ss.optim.spec("builtins:dict"),
     r"^optimizer 'builtins:dict' is the class dict, which is not a torch\.optim\.Optimizer "
     r"subclass; allowed: "),
    ("module class as an optimizer", lambda: ss.optim.spec(torch.nn.Linear),
     r"^optimizer '.*:Linear' is the class Linear, which is not a torch\.optim\.Optimizer "
     r"subclass"),
    ("optimizer whose step needs a closure", lambda: ss.optim.spec(torch.optim.LBFGS),
     r"^optimizer 'torch\.optim:LBFGS' is not supported: its step\(\) needs a closure .*; "
     r"allowed: optimizers whose step\(\) takes no argument or the loss"),
    ("shiftsim optimizer betas above 1", lambda: ss.optim.spec("adatam", betas=(1.5, 0.9)),
     r"^adatam: betas\[0\] must be in \[0, 1\), got 1\.5$"),
    ("fixed hyperparameter", lambda: ss.optim.spec("sgd", momentum=0.9),
     r"'momentum' is fixed by the optimizer name 'sgd'"),
    ("unknown shift", lambda: shift_from_dict({"type": "Warp"}),
     r"unknown shift 'Warp'; allowed: .*'LabelFlip'"),
    ("non-finite data", lambda: ss.data.from_tensors(torch.tensor([[0.0, float("nan")]] * 10),
                                                      torch.zeros(10, dtype=torch.long)),
     r"x_train has 10 non-finite values"),
    ("mismatched shapes", lambda: ss.data.from_tensors(torch.rand(10, 3), torch.zeros(9)),
     r"y_train must have shape \(10,\) to match x_train \(10, 3\), got \(9,\)"),
    ("labels outside the classes", lambda: ss.data.from_tensors(
        torch.rand(10, 3), torch.tensor([0, 1, 2, 5] * 2 + [0, 1]), classes=3),
     r"labels in \[0, 5\] but the dataset has 3 classes"),
    ("labels mixing names and numbers", lambda: ss.data.from_numpy(
        np.zeros((4, 2), np.float32), np.array(["a", 1, "b", 2], dtype=object)),
     r"^y_train mixes class names and other values \(1 of type int\); give every label as a "
     r"string, or every label as an integer class index$"),
    ("missing label among string labels", lambda: ss.data.from_numpy(
        np.zeros((4, 2), np.float32), np.array(["a", None, "b", "a"], dtype=object)),
     r"^y_train mixes class names and other values \(None of type NoneType\)"),
    ("string label not among the classes", lambda: ss.data.from_numpy(
        np.zeros((4, 2), np.float32), np.array(["a", "b", "c", "a"]), classes=["a", "b"]),
     r"^label 'c' is not one of the classes; allowed: 'a', 'b'$"),
    ("class count with string labels", lambda: ss.data.from_numpy(
        np.zeros((4, 2), np.float32), np.array(["a", "b", "c", "a"]), classes=3),
     r"^classes=3 is a number but the labels are class names"),
    ("integer labels of one class", lambda: ss.data.from_numpy(
        np.zeros((50, 2), np.float32), np.zeros(50, dtype=int)),
     r"^a dataset needs at least 2 classes, got 1 \(every label is 0\); pass classes=N"),
    ("string labels of one class", lambda: ss.data.from_numpy(
        np.zeros((50, 2), np.float32), np.array(["a"] * 50)),
     r"^a dataset needs at least 2 classes, got 1$"),
    ("float objects as labels", lambda: ss.data.from_numpy(
        np.zeros((4, 2), np.float32), np.array([0, 1.5, 1, 0], dtype=object)),
     r"^labels must be class indices \(integers\) or class names \(strings\), got 1\.5 of type "
     r"float$"),
    ("dataset items that are not pairs", lambda: ss.data.from_dataset([torch.zeros(1, 4, 4)] * 4),
     r"^train item 0: ds\[i\] must give \(image, label\), got Tensor$"),
    ("dataset images of the wrong type", lambda: ss.data.from_dataset([("img", 0)] * 4),
     r"^train item 0: an image must be a PIL image, a tensor or a numpy array, got str$"),
    ("dataset labels of the wrong type", lambda: ss.data.from_dataset([(torch.zeros(4, 4), 0.5)]),
     r"^train item 0: a label must be a class index \(int\) or a class name \(str\), got 0\.5$"),
    ("dataset images of different sizes", lambda: ss.data.from_dataset(
        [(torch.zeros(4, 4), 0), (torch.zeros(5, 5), 1)]),
     r"^images differ in shape: \(1, 4, 4\) \(the first\) and \(1, 5, 5\) \(train item 1\); "
     r"pass size=\(height, width\) to resize them$"),
    ("dataset channels of 2", lambda: ss.data.from_dataset([(torch.zeros(4, 4), 0)], channels=2),
     r"^channels must be None \(as stored\), 1 \(grey\) or 3 \(RGB\), got 2$"),
    ("dataset subset larger than the data", lambda: ss.data.from_dataset(
        [(torch.zeros(4, 4), i % 2) for i in range(4)], train_size=9),
     r"^train_size must be in \[1, 4\], got 9$"),
    ("not a dataset at all", lambda: ss.data.from_dataset(3),
     r"^the train dataset must support len\(ds\) and ds\[i\] -> \(image, label\), got int$"),
    ("missing CIFAR-10", lambda: ss.data.cifar10("/nonexistent-cifar"),
     r"^CIFAR-10 files not found under '/nonexistent-cifar' .*shiftsim never downloads"),
    ("images outside [0, 1]", lambda: ss.data.from_tensors(torch.rand(10, 1, 4, 4) * 255,
                                                            torch.arange(10) % 2),
     r"image inputs must be in \[0, 1\]"),
    ("rotate on tabular data", lambda: ss.Scenario(TAB, [ss.Phase(5, [ss.Rotate(10)])]),
     r"Rotate applies to images only; dataset 'synthetic' is tabular"),
    ("class prior of the wrong length", lambda: _scenario(phases=[ss.Phase(5, [ss.ClassPrior((1, 1, 1))])]),
     r"ClassPrior has 3 weights but the dataset 'digits' has 10 classes"),
    ("per-feature scale of the wrong length", lambda: ss.Scenario(
        TAB, [ss.Phase(5, [ss.FeatureScale((1.0, 2.0))])]),
     r"FeatureScale\.factor has 2 values but the dataset 'synthetic' has 4 features"),
    ("gradual width zero", lambda: ss.Gradual(0), r"Gradual\.width must be a positive integer, got 0"),
    ("gradual longer than the phase", lambda: ss.Phase(10, [], ss.Gradual(20)),
     r"Gradual width 20 is longer than the phase \(10 steps\)"),
    ("unknown ramp shape", lambda: ss.Gradual(5, "cubic"),
     r"unknown ramp shape 'cubic'; allowed: 'linear', 'sigmoid'"),
    ("gradual first phase", lambda: _scenario(phases=[ss.Phase(10, [], ss.Gradual(5))]),
     r"first phase cannot have a Gradual transition"),
    ("repeat of a later phase", lambda: _scenario(phases=[ss.Phase(5, repeat=1), ss.Phase(5)]),
     r"phase 0 repeats phase 1, but only phases 0..-1 come before it"),
    ("repeat of an unknown name", lambda: _scenario(phases=[ss.Phase(5), ss.Phase(5, repeat="x")]),
     r"phase 1 repeats 'x', which is not the name of an earlier phase"),
    ("negative noise", lambda: ss.GaussianNoise(-0.1), r"GaussianNoise\.std must be in \[0, inf\]"),
    ("noise without a level", lambda: ss.GaussianNoise(), r"GaussianNoise needs std=\.\.\. or severity=1\.\.5"),
    ("severity out of range", lambda: ss.GaussianNoise(severity=6), r"severity must be in \[1, 5\], got 6"),
    ("parameter and severity", lambda: ss.Contrast(0.5, severity=2), r"give factor or severity, not both"),
    ("permutation fraction above 1", lambda: ss.PixelPermutation(2.0),
     r"PixelPermutation\.fraction must be in \[0, 1\], got 2\.0"),
    ("shift of the wrong type", lambda: ss.Phase(5, ["rotate"]), r"must hold shifts .*got 'rotate'"),
    ("recurring regimes of a string", lambda: ss.recurring(D, "nope"),
     r"^recurring needs a list of regimes \(a shift or a list of shifts each\), got 'nope'$"),
    ("recurring regimes of strings", lambda: ss.recurring(D, ["rot"]),
     r"^recurring: each regime must be a shift such as Rotate\(30\) or a list of shifts"),
    ("covariate drift of a string", lambda: ss.covariate_drift(D, "nope"),
     r"^covariate_drift needs a list of shifts \(one per phase\), got 'nope'$"),
    ("covariate drift of a list of strings", lambda: ss.covariate_drift(D, ["nope"]),
     r"^covariate_drift: each entry of shifts must be a shift such as Rotate\(30\) or a list "
     r"of shifts, got 'nope'$"),
    ("study with an unknown argument", lambda: ss.Study(
        "x", _scenario(), model=ss.models.linear(), optimizers="sgd", foo=1),
     r"^unknown Study argument 'foo'; allowed: 'name', 'scenarios', 'model', 'optimizers', "
     r"'seeds', 'models', 'description', 'tuning', 'where'$"),
    # custom shifts: refused when the Phase is built, naming what is missing
    ("custom shift without apply", lambda: ss.Phase(5, [_NoApply()]),
     r"^shift _NoApply has no apply\(\) method; an input shift must define apply\(self, x, "
     r"state, generator\)$"),
    ("custom shift not a dataclass", lambda: ss.Phase(5, [_Plain()]),
     r"^shift _Plain must be a frozen dataclass: decorate the class with "
     r"@dataclasses\.dataclass\(frozen=True\)$"),
    ("custom shift with the wrong apply", lambda: ss.Phase(5, [_OneArg()]),
     r"^_OneArg\.apply must take \(x, state, generator\); it takes \(x\)$"),
    ("custom shift with the wrong prepare", lambda: ss.Phase(5, [_BadPrepare()]),
     r"^_BadPrepare\.prepare must take \(input_shape, generator\); it takes \(\)$"),
    ("custom label shift", lambda: ss.Phase(5, [_LabelKind()]),
     r"^shift _LabelKind has kind 'label'; your own shifts change inputs \(kind 'input'\)"),
    ("custom shift named like a built-in", lambda: type("Rotate", (ss.shifts.Shift,), {}),
     r"^a shift named 'Rotate' exists in shiftsim already; give yours another name$"),
    ("two label flips in a phase", lambda: ss.Phase(5, [ss.LabelFlip(0.1), ss.LabelFlip(0.2)]),
     r"at most one LabelFlip"),
    ("zero-width layer", lambda: ss.models.mlp(hidden=(0,)), r"hidden\[0\] must be a positive integer, got 0"),
    ("unknown activation", lambda: ss.models.mlp(activation="swish"),
     r"unknown activation 'swish'; allowed: 'relu'"),
    ("cnn on tabular data", lambda: ss.models.cnn().build(TAB), r"cnn needs image data"),
    ("negative seed", lambda: ss.run(_scenario(), ss.models.linear(), seed=-1),
     r"seed must be a non-negative integer, got -1"),
    ("unknown device", lambda: ss.run(_scenario(), ss.models.linear(), device="tpu"),
     r"unknown device 'tpu'; allowed: 'auto', 'cpu'"),
    ("model of the wrong type", lambda: ss.run(_scenario(), "mlp"), r"model must be a ModelSpec"),
    ("zero threads", lambda: ss.run(_scenario(), ss.models.linear(), threads=0),
     r"^threads must be a positive integer or None, got 0$"),
    # a model that does not fit the data: one line naming both shapes, before step 0
    ("model outputs too few classes", lambda: ss.run(_scenario(), _net(64, 3)),
     r"the model does not fit dataset 'digits': it outputs 3 values per sample \(output shape "
     r"\(2, 3\) for inputs of shape \(2, 1, 8, 8\)\) but the dataset has 10 classes; its last "
     r"layer Linear\(in_features=64, out_features=3, bias=True\) must output 10$"),
    ("model outputs too few classes, plain loop", lambda: ss.run(_scenario(), _net(64, 3),
                                                                 vectorized=False),
     r"it outputs 3 values per sample .* but the dataset has 10 classes"),
    ("model input of the wrong size", lambda: ss.run(_scenario(), _net(784, 10)),
     r"the model does not fit dataset 'digits': on inputs of shape \(1, 8, 8\) \(64 values per "
     r"sample\) it raised RuntimeError: mat1 and mat2 shapes cannot be multiplied \(2x64 and "
     r"784x10\); its first layer is Linear\(in_features=784, out_features=10, bias=True\)$"),
    ("model factory of the wrong width", lambda: ss.run(_scenario(), lambda d: _net(64, 4)),
     r"it outputs 4 values per sample"),
    ("conv model on the wrong channels", lambda: ss.run(_scenario(), torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(10))),
     r"on inputs of shape \(1, 8, 8\) .* expected input\[2, 1, 8, 8\] to have 3 channels.*"
     r"its first layer is Conv2d\(3, 4"),
    ("model of the wrong output rank", lambda: ss.run(_scenario(), torch.nn.Sequential(
        _net(64, 10), torch.nn.Unflatten(1, (2, 5)))),
     r"its output has shape \(2, 2, 5\) for inputs of shape \(2, 1, 8, 8\); it must be "
     r"\(batch, 10\), one logit per class"),
    ("fleet model of the wrong width", lambda: ss.run_fleet(_scenario(), _net(64, 3), [("sgdm", 0)]),
     r"it outputs 3 values per sample"),
]


@dataclasses.dataclass(frozen=True)
class _NoApply(ss.shifts.Shift):
    strength: float = 1.0


class _Plain(ss.shifts.Shift):
    def apply(self, x, state, generator):
        return 1 - x


@dataclasses.dataclass(frozen=True)
class _OneArg(ss.shifts.Shift):
    def apply(self, x):
        return 1 - x


@dataclasses.dataclass(frozen=True)
class _BadPrepare(ss.shifts.Shift):
    def prepare(self):
        return None

    def apply(self, x, state, generator):
        return 1 - x


@dataclasses.dataclass(frozen=True)
class _LabelKind(ss.shifts.Shift):
    kind = "label"

    def apply(self, x, state, generator):
        return x


def _net(n_in, n_out):
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(n_in, n_out))


@pytest.mark.parametrize("make,pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_a_clear_error(make, pattern):
    with pytest.raises(ShiftsimError, match=pattern):
        make()


def test_there_are_at_least_25_cases():
    assert len(CASES) >= 25


def _sgd_factory(params, lr=0.1):
    return torch.optim.SGD(params, lr=lr)


def test_what_the_stricter_checks_still_accept():
    # a factory function is only called when a run builds it
    opt = ss.optim.spec(_sgd_factory, lr=0.05).build([torch.nn.Parameter(torch.zeros(2))])
    assert type(opt).__name__ == "SGD"
    # labels of one class with the class count given: the other classes are declared
    ds = ss.data.from_numpy(np.zeros((50, 2), np.float32), np.zeros(50, dtype=int), classes=2)
    assert ds.classes == ("0", "1")
    # limits of 1 that the optimizer specs allow: TAM's cosine smoothing (d stays 1/2), the
    # Adaptive-Memory bound on its momentum weight (beta_t in [0, 1], spec section 4.1)
    assert ss.optim.spec("tam", gamma=1.0).kwargs["gamma"] == 1.0
    assert ss.optim.spec("adamem_sgd", beta_max=1.0).kwargs["beta_max"] == 1.0

    # an optimizer class whose step() needs the loss: the loop passes it, so it is accepted
    class NeedsLoss(torch.optim.SGD):
        def step(self, loss):  # noqa: D102 - a required loss argument
            return super().step()

    assert ss.optim.spec(NeedsLoss, lr=0.1).needs_loss


def test_cuda_requested_without_cuda_is_explained():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ShiftsimError, match=r"CUDA is not available here; use device='auto'"):
        ss.run(_scenario(), ss.models.linear(), device="cuda")


# -- the CLI --------------------------------------------------------------------------------

def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "shiftsim.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def _write(path, text):
    path.write_text(textwrap.dedent(text))
    return path


CLI_CASES = [
    ("missing file", lambda d: ["run", "missing.py", "--out", "out"], r"^error: file not found: 'missing.py'$"),
    ("no scenario defined", lambda d: ["run", str(_write(d / "empty.py", "x = 1\n")), "--out", "out"],
     r"^error: empty\.py defines no 'scenario'; it must define scenario = \.\.\. \(found: x\)$"),
    ("syntax error", lambda d: ["run", str(_write(d / "bad.py", "scenario = (\n")), "--out", "out"],
     r"^error: bad\.py: syntax error at line 1"),
    ("file raises", lambda d: ["run", str(_write(d / "raises.py", "import shiftsim as ss\n"
                                                  "scenario = ss.LabelFlip(3)\n")), "--out", "out"],
     r"^error: raises\.py: LabelFlip\.rate must be in \[0, 1\], got 3$"),
    ("user code error", lambda d: ["run", str(_write(d / "name.py", "scenario = undefined_name\n")),
                                   "--out", "out"],
     r"^error: name\.py at line 1 raised NameError: name 'undefined_name' is not defined$"),
    ("scenario of the wrong type", lambda d: ["run", str(_write(d / "wrong.py", "scenario = 3\n")),
                                              "--out", "out"],
     r"^error: wrong\.py: 'scenario' must be a shiftsim Scenario, got int$"),
    ("unknown optimizer", lambda d: ["run", str(_write(d / "ok.py", OK)), "--optimizer", "sgdx",
                                     "--out", "out"],
     r"^error: unknown optimizer 'sgdx'; allowed: 'sgd'"),
    ("bad learning rate", lambda d: ["run", str(_write(d / "ok.py", OK)), "--lr", "fast", "--out", "out"],
     r"^error: argument --lr: expected a number, got 'fast'"),
    ("unknown command", lambda d: ["explode"], r"^error: argument COMMAND: invalid choice: 'explode'"),
    ("study file without study", lambda d: ["study", str(_write(d / "s.py", "x = 2\n")), "--out", "out"],
     r"^error: s\.py defines no 'study'"),
    ("report of a missing folder", lambda d: ["report", "nowhere", "--out", "out"], r"^error: .*nowhere"),
    ("model that does not fit", lambda d: ["run", str(_write(d / "m.py", OK + MISFIT)), "--out", "out"],
     r"^error: the model does not fit dataset 'digits': it outputs 3 values per sample \(output "
     r"shape \(2, 3\) for inputs of shape \(2, 1, 8, 8\)\) but the dataset has 10 classes; its "
     r"last layer Linear\(in_features=64, out_features=3, bias=True\) must output 10$"),
    ("model input that does not fit", lambda d: ["run", str(_write(d / "m.py", OK + MISFIT_IN)),
                                                 "--out", "out"],
     r"^error: the model does not fit dataset 'digits': on inputs of shape \(1, 8, 8\) \(64 "
     r"values per sample\) it raised RuntimeError: mat1 and mat2 shapes cannot be multiplied"),
    ("run --out below a file", lambda d: ["run", str(_write(d / "ok.py", OK)), "--out",
                                          str(_write(d / "afile", "x")) + "/sub"],
     r"^error: --out '.*/afile/sub' cannot be created: '.*/afile' is a file, not a folder$"),
    ("run --out a file", lambda d: ["run", str(_write(d / "ok.py", OK)), "--out",
                                    str(_write(d / "afile", "x"))],
     r"^error: --out '.*/afile' exists and is not a folder$"),
    ("study --out below a file", lambda d: ["study", str(_write(d / "s.py", STUDY_OK)), "--out",
                                            str(_write(d / "afile", "x")) + "/deeper/sub"],
     r"^error: --out '.*/afile/deeper/sub' cannot be created: '.*/afile' is a file, not a folder$"),
    ("report --out below a file", lambda d: ["report", str(d), "--out",
                                             str(_write(d / "afile", "x")) + "/sub"],
     r"^error: --out '.*/afile/sub' cannot be created: '.*/afile' is a file, not a folder$"),
    ("scenario file with mixed labels", lambda d: ["run", str(_write(d / "l.py", LABELS)), "--out",
                                                   "out"],
     r"^error: l\.py: y_train mixes class names and other values \(3 of type int\)"),
    ("scenario file with a custom shift lacking apply", lambda d: ["run", str(_write(
        d / "c.py", CUSTOM)), "--out", "out"],
     r"^error: c\.py: shift Invert has no apply\(\) method; an input shift must define "
     r"apply\(self, x, state, generator\)$"),
    ("scenario file with a missing image folder", lambda d: ["run", str(_write(
        d / "f.py", "import shiftsim as ss\nds = ss.data.image_folder('photos')\n")), "--out", "out"],
     r"^error: f\.py: image folder 'photos' is not a folder$"),
    ("study with adam betas above 1", lambda d: ["study", str(_write(
        d / "s.py", STUDY_OK.replace('"sgd"}', 'ss.optim.spec("adam", betas=(1.5, 0.9))}'))),
        "--out", "out"],
     r"^error: s\.py: adam\.betas\[0\] must be in \[0, 1\), got 1\.5$"),
    ("study whose model does not fit", lambda d: ["study", str(_write(d / "s.py", STUDY_CNN)),
                                                  "--out", "out"],
     r"^error: cnn needs image data \(N, C, H, W\); got inputs of shape \(4,\)"),
    ("optimizer path to a module", lambda d: ["run", str(_write(d / "ok.py", OK)), "--optimizer",
                                              "os:path", "--out", "out"],
     r"^error: optimizer 'os:path' is a module, not an optimizer; allowed: "),
    ("optimizer path to a layer", lambda d: ["run", str(_write(d / "ok.py", OK)), "--optimizer",
                                             "torch.nn:Linear", "--out", "out"],
     r"^error: optimizer 'torch\.nn:Linear' is the class Linear, which is not a "
     r"torch\.optim\.Optimizer subclass"),
    ("optimizer LBFGS", lambda d: ["run", str(_write(d / "ok.py", OK)), "--optimizer",
                                   "torch.optim:LBFGS", "--out", "out"],
     r"^error: optimizer 'torch\.optim:LBFGS' is not supported: its step\(\) needs a closure"),
    ("scenario file that exits", lambda d: ["run", str(_write(d / "e.py", "import sys\n"
                                                              "sys.exit(0)\n")), "--out", "out"],
     r"^error: e\.py called sys\.exit\(0\) while being loaded; a scenario file must define "
     r"`scenario` \(or `study`\) without exiting$"),
    ("study file that exits", lambda d: ["study", str(_write(d / "s.py", "raise SystemExit\n")),
                                         "--out", "out"],
     r"^error: s\.py called sys\.exit\(\) while being loaded"),
    ("study of a shift the workers cannot import", lambda d: [
        "study", str(_write(d / "s.py", STUDY_LOCAL_SHIFT)), "--out", "out", "--workers", "2",
        "--no-fleet", "--quiet"],
     r"^error: shift Halve is defined in the study file, which worker processes cannot import"),
]
OK = """
import shiftsim as ss
scenario = ss.Scenario(ss.data.digits(), [ss.Phase(5)], batch_size=8)
"""
MISFIT = """
from torch import nn
model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
"""
MISFIT_IN = """
from torch import nn
model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
"""
LABELS = """
import numpy as np
import shiftsim as ss
ds = ss.data.from_numpy(np.zeros((4, 2), np.float32), np.array(["a", 3, "b", "a"], dtype=object))
"""
CUSTOM = """
import dataclasses
import shiftsim as ss

@dataclasses.dataclass(frozen=True)
class Invert(ss.shifts.Shift):
    strength: float = 1.0

scenario = ss.Scenario(ss.data.digits(), [ss.Phase(5), ss.Phase(5, [Invert()])], batch_size=8)
"""
STUDY_OK = """
import shiftsim as ss
sc = ss.Scenario(ss.data.digits(), [ss.Phase(5)], batch_size=8)
study = ss.Study("s", {"a": sc}, model=ss.models.mlp(hidden=(4,)), optimizers={"sgd": "sgd"},
                 seeds=1)
"""
STUDY_LOCAL_SHIFT = """
import dataclasses
import shiftsim as ss

@dataclasses.dataclass(frozen=True)
class Halve(ss.shifts.Shift):
    def apply(self, x, state, generator):
        return 0.5 * x

sc = ss.Scenario(ss.data.digits(), [ss.Phase(5), ss.Phase(5, [Halve()])], batch_size=8)
study = ss.Study("s", {"a": sc}, model=ss.models.mlp(hidden=(4,)), optimizers={"sgd": "sgd"},
                 seeds=2)
"""
STUDY_CNN = """
import shiftsim as ss
sc = ss.Scenario(ss.data.synthetic(n=100, dim=4), [ss.Phase(5)], batch_size=8)
study = ss.Study("s", {"a": sc}, model=ss.models.cnn(), optimizers={"sgd": "sgd"}, seeds=1)
"""


def _run_in_process(args, cwd, capsys, monkeypatch):
    from shiftsim import cli

    monkeypatch.chdir(cwd)
    try:
        code = cli.main(args)
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.err, captured.out


@pytest.mark.parametrize("argv,pattern", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_prints_one_line_exits_2_and_writes_nothing(tmp_path, capsys, monkeypatch, argv,
                                                        pattern):
    import re

    args = argv(tmp_path)
    before = set(p.name for p in tmp_path.iterdir())
    code, err, out = _run_in_process(args, tmp_path, capsys, monkeypatch)
    assert code == 2, err
    assert out == "", out  # no status line, no table: nothing ran
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert re.search(pattern, lines[0]), lines[0]
    after = set(p.name for p in tmp_path.iterdir())
    assert "out" not in after and after - before <= {"__pycache__"}


@pytest.mark.parametrize("case", ["missing file", "user code error", "model that does not fit",
                                  "run --out below a file", "study with adam betas above 1"])
def test_the_installed_entry_point_prints_no_traceback(tmp_path, case):
    import re

    _, argv, pattern = next(c for c in CLI_CASES if c[0] == case)
    proc = _cli(*argv(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert re.search(pattern, proc.stderr.strip()) and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


# -- output folders are checked before any work ---------------------------------------------

def test_out_paths_below_a_file_fail_before_any_work_from_python(tmp_path):
    from shiftsim.study import Study

    (tmp_path / "afile").write_text("x")
    bad = tmp_path / "afile" / "sub"
    study = Study("s", {"a": _scenario()}, model=ss.models.mlp(hidden=(4,)),
                  optimizers={"sgd": "sgd"}, seeds=1)
    with pytest.raises(ShiftsimError, match=r"results folder '.*/afile/sub' cannot be created: "
                                             r"'.*/afile' is a file, not a folder$"):
        study.run(bad, workers=1, progress=False)
    with pytest.raises(ShiftsimError, match=r"report folder '.*/afile/sub' cannot be created"):
        ss.report(tmp_path, bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_run_out_that_cannot_be_created_fails_before_the_run(tmp_path, monkeypatch, capsys):
    from shiftsim import cli

    f = _write(tmp_path / "ok.py", OK)
    code, err, out = _run_in_process(["run", str(f), "--out", "/proc/shiftsim-nope"], tmp_path,
                                     capsys, monkeypatch)
    assert code == 2 and out == ""  # no table: the run did not start
    assert re.fullmatch(r"error: (cannot create --out '/proc/shiftsim-nope': .*|--out "
                        r"'/proc/shiftsim-nope' cannot be created: '/proc' is not writable)\n",
                        err), err
    assert cli.main(["run", str(f), "--out", "/proc"]) == 2  # a folder that takes no file
    assert capsys.readouterr().err.startswith("error: --out '/proc' is not writable")


def test_an_unwritable_out_folder_is_named(tmp_path, monkeypatch, capsys):
    import os

    from shiftsim import cli

    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(locked)
                        else real(p, mode, **kw))  # (as root, chmod cannot make it unwritable)
    f = _write(tmp_path / "ok.py", OK)
    assert cli.main(["run", str(f), "--out", str(locked / "new" / "sub")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: --out '{locked}/new/sub' cannot be created: '{locked}' is not "
                   "writable")
    assert cli.main(["run", str(f), "--out", str(locked)]) == 2
    assert capsys.readouterr().err.strip() == f"error: --out '{locked}' is not writable"
    assert list(locked.iterdir()) == []


def test_a_shift_workers_cannot_import_is_refused_before_any_worker_starts(tmp_path):
    from shiftsim.study import Study

    @dataclasses.dataclass(frozen=True)
    class Dim(ss.shifts.Shift):  # defined in a function: pickle cannot send it to a worker
        def apply(self, x, state, generator):
            return 0.5 * x

    sc = _scenario(phases=[ss.Phase(5), ss.Phase(5, [Dim()])])
    study = Study("dim", {"a": sc, "b": sc.replace(name="b", batch_size=4)},
                  model=ss.models.mlp(hidden=(4,)), optimizers={"sgd": "sgd"}, seeds=2)
    pattern = (r"^shift Dim is defined in .*<locals>\.Dim, which worker processes cannot "
               r"import; define it in a module on the Python path")
    for fleet in (False, True):
        with pytest.raises(ShiftsimError, match=pattern):
            study.run(tmp_path / f"out{fleet}" / "sub", workers=2, fleet=fleet, progress=False)
        # refused before the folder was written: no study.json, indexes or lock file, and the
        # folders it would have created are gone
        assert not (tmp_path / f"out{fleet}").exists()
    (tmp_path / "kept").mkdir()  # a folder that was there before stays
    with pytest.raises(ShiftsimError, match=pattern):
        study.run(tmp_path / "kept", workers=2, fleet=False, progress=False)
    assert [p.name for p in (tmp_path / "kept").iterdir()] in ([], [".lock"])
    # in this process it runs
    assert study.run(tmp_path / "here", workers=1, progress=False).done == 4


def _broken_factory(params, lr: float = 0.1):
    """An optimizer factory that raises when a run builds it: every run with it fails."""
    raise RuntimeError("this optimizer is broken on purpose")


def test_a_report_with_no_results_names_the_failure_not_a_pending_run(tmp_path, capsys):
    import shutil

    from shiftsim import cli
    from shiftsim.study import Study

    study = Study("nothing", {"a": _scenario()}, model=ss.models.mlp(hidden=(4,)),
                  optimizers={"sgd": "sgd", "broken": ss.optim.spec(_broken_factory)}, seeds=1)
    study.run(tmp_path / "s", workers=1, progress=False)
    ok = next(s.run_id for s in study.grid() if s.label_dict["optimizer"] == "sgd")
    shutil.rmtree(tmp_path / "s" / "runs" / ok)  # now pending
    assert cli.main(["report", str(tmp_path / "s"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no run of the study has results to report (")
    assert "first error: RuntimeError: this optimizer is broken on purpose" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "r").exists()


# -- metrics, plots, the stream, real-time costs, loaders, Avalanche: bad values are refused ---

def _rows(**kw):
    """run × phase recovery rows (what run_recovery reduces)."""
    import pandas as pd

    rows = pd.DataFrame({"run_id": "r", "phase": [1, 2, 3], "shifted": True,
                         "recovery_steps": [4.0, 10.0, float("nan")],
                         "recovery_samples": [40.0, 100.0, float("nan")],
                         "censored": [False, False, True], "drop": 0.2, "deficit": 0.1})
    return rows.assign(**kw)


def _trace(**kw):
    import pandas as pd

    tr = pd.DataFrame({"run_id": "a", "optimizer": "sgdm", "step": range(40),
                       "phase": [0] * 20 + [1] * 20, "n": 10, "correct": 5,
                       "diag_x": np.linspace(0, 1, 40)})
    return tr.assign(**kw)


def _severity_rows(**kw):
    import pandas as pd

    d = pd.DataFrame({"optimizer": ["a"] * 4 + ["b"] * 4, "severity": [0.5, 0.5, 1, 1] * 2,
                      "phase": 1, "recovery_steps": [3, 5, 8, np.nan, 2, 2, 4, 6],
                      "censored": [False, False, False, True] + [False] * 4, "name": "p",
                      "status": "ok", "online_acc": 0.5})
    return d.assign(**kw)


def _recovery_of(correct=(9, 9, 9, 2, 2, 2, 9, 9, 9, 9), chance=0.1):
    import pandas as pd

    tr = pd.DataFrame({"step": range(10), "phase": [0] * 3 + [1] * 7, "n": 10,
                       "correct": list(correct)})
    ph = pd.DataFrame({"phase": [0, 1], "ceiling": 1.0, "chance": chance})
    return ss.metrics.recovery(tr, ph, window=1, onset=2, persistence=2)


def _stream():
    sc = ss.label_flip_tasks(D, rate=1.0, tasks=3, steps_per_task=3, batch_size=4)
    return ss.stream.Stream(sc, seed=0, device="cpu")


def _plot(name, *args, **kw):
    import matplotlib.pyplot as plt

    try:
        return getattr(ss.plots, name)(*args, **kw)
    finally:
        plt.close("all")


def _avalanche(**kw):
    from shiftsim.integrations.avalanche import AvalancheLearner, reservoir_replay

    return AvalancheLearner(reservoir_replay, optimizer="sgd", **kw)


MORE_CASES = [
    # censored / shifted flags: strings and missing values are refused, not read as True
    ("censored as strings", lambda: ss.metrics.run_recovery(
        _rows(censored=["False", "False", "True"])),
     r"^rows column 'censored' must be True/False \(or 1/0\) for every run, got 'False'$"),
    ("censored with a missing value", lambda: ss.metrics.run_recovery(
        _rows(censored=[False, float("nan"), True])),
     r"^rows column 'censored' must be True/False for every run, got a missing value$"),
    ("censored yes/no", lambda: ss.metrics.median_interval([1, 2, 3], ["no", "no", "yes"]),
     r"^censored must be True/False \(or 1/0\) for every run, got 'no'$"),
    ("censored of 2", lambda: ss.metrics.median_recovery([1, 2, 3], [0, 2, 1]),
     r"^censored must be True/False \(or 1/0\) for every run, got 2$"),
    # impossible values
    ("negative p-value", lambda: ss.metrics.holm([-0.1, 0.2]),
     r"^p_values must be in \[0, 1\] \(NaN for a test not made\), got -0\.1$"),
    ("p-value above 1", lambda: ss.metrics.holm([0.2, 1.5]), r"got 1\.5$"),
    ("negative recovery time", lambda: ss.metrics.median_recovery([-1, 2, 3], [False] * 3),
     r"^times must be recovery times \(>= 0, NaN for a run without one\), got -1\.0$"),
    ("ragged accuracy matrix", lambda: ss.metrics.average_accuracy([[1.0], [0.5, 1.0]]),
     r"^accuracy matrix must be a 2-D table of numbers \(phases × regimes, every row the same "
     r"length\), got \[\[1\.0\], \[0\.5, 1\.0\]\]$"),
    ("accuracy matrix of text", lambda: ss.metrics.backward_transfer("x"),
     r"^accuracy matrix must be a 2-D table of numbers .*, got 'x'$"),
    ("more correct than the batch", lambda: _recovery_of(correct=(9, 9, 9, 2, 2, 2, 50, 9, 9, 9)),
     r"^trace has correct=50 with n=10 at step 6; correct counts the batch's correct "
     r"predictions, so it must be in \[0, n\]$"),
    ("negative correct count", lambda: _recovery_of(correct=(9, -1, 9, 2, 2, 2, 9, 9, 9, 9)),
     r"^trace has correct=-1 with n=10 at step 1;"),
    ("chance level above 1", lambda: _recovery_of(chance=5.0),
     r"^phases has chance 5\.0 for phase 0; chance is an accuracy, so it must be in \[0, 1\] "
     r"\(or NaN when unknown\)$"),
    ("negative class weights", lambda: ss.metrics.max_average_accuracy(
        [[0, 1], [1, 0]], ["x", "x"], [-1.0, 2.0]),
     r"^max_average_accuracy: class_weights must be class counts or shares \(finite, >= 0, not "
     r"all 0\), got \[-1\.0, 2\.0\]$"),
    ("mean over a missing column", lambda: ss.metrics.mean_interval_by(_trace(), "nope",
                                                                       ["optimizer"]),
     r"^df is missing column\(s\) 'nope'; it has: 'run_id', 'optimizer'"),
    ("mean over a text column", lambda: ss.metrics.mean_interval_by(_trace(), "run_id",
                                                                    "optimizer"),
     r"^mean_interval_by: column 'run_id' must hold numbers, got 'a'$"),
    # the stream's phase and regime indexes
    ("plan of a phase out of range", lambda: _stream().plan(5),
     r"^phase 5 is out of range: the scenario has 3 phases \(0-2\)$"),
    ("plan of a negative phase", lambda: _stream().plan(-1),
     r"^phase -1 is out of range: the scenario has 3 phases \(0-2\)$"),
    ("held-out set of a regime out of range", lambda: _stream().heldout(9),
     r"^regime 9 is out of range: the scenario has 3 regimes \(0-2\)$"),
    ("negative regime", lambda: _stream().regime(-1),
     r"^regime -1 is out of range: the scenario has 3 regimes \(0-2\)$"),
    ("phase index of the wrong type", lambda: _stream().plan("1"),
     r"^phase must be an integer index, got '1'$"),
    # figures: a blank or misleading figure, or a bare pandas error, never
    ("stream figure of no rows", lambda: _plot("stream_accuracy", _trace().iloc[0:0]),
     r"^stream_accuracy: no rows to plot \(the traces are empty\)$"),
    ("recovery curves of no rows", lambda: _plot("recovery_curves", _trace().iloc[0:0]),
     r"^recovery_curves: no rows to plot \(the traces are empty\)$"),
    ("diagnostics of a missing column", lambda: _plot("diagnostics", _trace(), columns=["nope"]),
     r"^diagnostics needs columns \['nope'\]; missing \['nope'\]"),
    ("run figure of a frame", lambda: _plot("run_accuracy", _trace()),
     r"^run_accuracy needs a RunResult \(what ss\.run returns\), got DataFrame; for traces in "
     r"a DataFrame use plots\.stream_accuracy$"),
    ("band of a missing column", lambda: ss.plots.mean_band(_trace(), "step", "nope",
                                                            ["optimizer"]),
     r"^df is missing column\(s\) 'nope'"),
    ("severity curves of a text column", lambda: _plot("severity_curves", _severity_rows(),
                                                       y="name"),
     r"^severity_curves: column 'name' must hold numbers, got 'p'$"),
    ("severity heatmap of a text column", lambda: _plot("severity_heatmap", _severity_rows(),
                                                        value="status"),
     r"^severity_heatmap: column 'status' must hold numbers, got 'ok'$"),
    ("severity curves with censored as strings", lambda: _plot(
        "severity_curves", _severity_rows(censored=["False"] * 8)),
     r"^severity_curves: column 'censored' must be True/False \(or 1/0\) for every run, got "
     r"'False'$"),
    ("hue order naming nothing present", lambda: _plot("severity_curves", _severity_rows(),
                                                       hue_order=["nope"]),
     r"^hue_order \['nope'\] names no value of column 'optimizer'; present: 'a', 'b'$"),
    ("stream hue order naming nothing present", lambda: _plot("stream_accuracy", _trace(),
                                                              hue_order=["nope"]),
     r"^hue_order \['nope'\] names no value of column 'optimizer'; present: 'sgdm'$"),
    ("column order naming nothing present", lambda: _plot("stream_accuracy", _trace(),
                                                          col="run_id", col_order=["z"]),
     r"^col_order \['z'\] names no value of column 'run_id'; present: 'a'$"),
    ("severity curves of no rows", lambda: _plot("severity_curves", _severity_rows().iloc[0:0]),
     r"^severity_curves: no rows to plot \(the frame is empty\)$"),
    ("severity heatmap of no rows", lambda: _plot("severity_heatmap",
                                                  _severity_rows().iloc[0:0]),
     r"^severity_heatmap: no rows to plot \(the frame is empty\)$"),
    ("severity curves of no severity", lambda: _plot(
        "severity_curves", _severity_rows(severity=np.nan)),
     r"^severity_curves: no rows to plot \(none of the 8 rows has a value of 'severity' and a "
     r"phase >= 1\)$"),
    ("sensitivity of a study without tuning", lambda: _plot("sensitivity", __import__(
        "pandas").DataFrame()),
     r"^no tuning curves: the study has no tuning stage \(Study\(\.\.\., "
     r"tuning=Tuning\(\.\.\.\)\)\)$"),
    # real-time costs
    ("no costs", lambda: realtime.relative_costs([]),
     r"^relative_costs needs at least one cost, got none$"),
    ("zero cost", lambda: realtime.relative_costs([0, 1]),
     r"^costs\[0\] must be a positive, finite number \(a learner's cost per step\), got 0$"),
    ("negative cost", lambda: realtime.relative_costs([2, -1]),
     r"^costs\[1\] must be a positive, finite number .*, got -1$"),
    # loaders
    ("negative digits seed", lambda: ss.data.digits(seed=-1),
     r"^seed must be a non-negative integer, got -1$"),
    ("digits seed numpy cannot take", lambda: ss.data.digits(seed=2**32),
     r"^seed must be a non-negative integer below 2\*\*32, got 4294967296$"),
    ("negative synthetic seed", lambda: ss.data.synthetic(seed=-1),
     r"^seed must be a non-negative integer, got -1$"),
    ("negative split seed", lambda: ss.data.from_numpy(np.zeros((10, 2), np.float32),
                                                       np.arange(10) % 2, seed=-3),
     r"^seed must be a non-negative integer, got -3$"),
    ("object array of text as inputs", lambda: ss.data.from_numpy(
        np.array([[1, "a"]] * 10, dtype=object), np.arange(10) % 2),
     r"^x_train must hold real numbers, got 'a' of type str \(a numpy array of dtype object\)$"),
    ("complex inputs", lambda: ss.data.from_numpy(np.ones((10, 2), complex), np.arange(10) % 2),
     r"^x_train must hold real numbers, got \(1\+0j\) of type complex"),
    ("unknown key in a dataset source", lambda: ss.data.load({"loader": "digits", "foo": 1}),
     r"^unknown key 'foo' in a 'digits' dataset source; allowed: 'loader', 'test_fraction', "
     r"'seed'$"),
    # Avalanche replay sizes: refused when the learner is made, not inside Avalanche
    ("fractional replay memory", lambda: _avalanche(mem_size=2.5),
     r"^mem_size must be a non-negative integer, got 2\.5$"),
    ("negative replay memory", lambda: _avalanche(mem_size=-5),
     r"^mem_size must be a non-negative integer, got -5$"),
    ("zero replayed samples per step", lambda: _avalanche(batch_size_mem=0),
     r"^batch_size_mem must be a positive integer or None, got 0$"),
]


@pytest.mark.parametrize("make,pattern", [c[1:] for c in MORE_CASES],
                         ids=[c[0] for c in MORE_CASES])
def test_bad_values_for_metrics_plots_and_loaders_raise_a_clear_error(make, pattern):
    with pytest.raises(ShiftsimError, match=pattern):
        make()


def test_what_the_value_checks_still_accept():
    import matplotlib
    import pandas as pd

    # a single column name is one column, not its letters
    rows = pd.DataFrame({"scenario": "s", "optimizer": ["a", "a", "b", "b"],
                         "phase": 1, "plateau": [0.8, 0.9, 0.6, 0.7], "ceiling": 0.8})
    assert ss.metrics.common_reference(rows, by="scenario").equals(
        ss.metrics.common_reference(rows, by=["scenario"]))
    assert ss.metrics.run_recovery(_rows(), by="run_id").equals(
        ss.metrics.run_recovery(_rows(), by=["run_id"]))
    tr = _trace()
    assert ss.plots.mean_band(tr, "step", "correct", by="optimizer").equals(
        ss.plots.mean_band(tr, "step", "correct", ["optimizer"]))
    # censored flags as booleans, 1/0 and pandas' nullable booleans
    assert ss.metrics.median_recovery([3, 5, np.nan], [0, 0, 1]) == 5.0
    assert ss.metrics.median_recovery([3, 5, np.nan], [0.0, 0.0, 1.0]) == 5.0
    assert ss.metrics.median_recovery(
        [3, 5, np.nan], pd.array([False, False, True], dtype="boolean")) == 5.0
    assert ss.metrics.run_recovery(_rows(censored=[0, 0, 1]))["censored_shifts"].tolist() == [1]
    # paired differences of recovery times may be negative (reports take their median)
    assert ss.metrics.median_interval([-3.0, -1.0, 2.0], [False] * 3)[0] == -1.0
    # a zero class weight (a class absent from the held-out set) and NaN p-values
    assert ss.metrics.max_average_accuracy([[0, 1], [1, 0]], ["x", "y"], [0, 3]) == 1.0
    assert np.isnan(ss.metrics.holm([np.nan, 0.0, 1.0])[0])
    # a palette without every line's name: the others get default colours it does not use
    fig = ss.plots.stream_accuracy(tr.assign(optimizer=["a"] * 20 + ["b"] * 20,
                                             run_id=["a"] * 20 + ["b"] * 20),
                                   palette={"a": "#0072B2"})
    colours = {line.get_label(): matplotlib.colors.to_hex(line.get_color())
               for line in fig.axes[0].get_lines() if line.get_label() in ("a", "b")}
    assert colours == {"a": "#0072b2", "b": "#e69f00"}
    matplotlib.pyplot.close(fig)
    # an empty frame drawn into a panel of a larger figure (a report's recovery panel in a
    # study without shifts): the panel says so
    fig, axes = matplotlib.pyplot.subplots(1, 2)
    ss.plots.severity_heatmap(_severity_rows().iloc[0:0], value="recovery_steps", ax=axes[0])
    ss.plots.severity_curves(_severity_rows().iloc[0:0], ax=axes[1])
    assert [[t.get_text() for t in ax.texts] for ax in axes] == [["no values to plot"]] * 2
    matplotlib.pyplot.close(fig)
    # an infinite cost: the limit of slower learners, trains on the first batch only
    assert realtime.train_schedule(float("inf"), 3).tolist() == [True, False, False]
    # numbers in an object array are numbers
    ds = ss.data.from_numpy(np.array([[1, 2.5]] * 10, dtype=object), np.arange(10) % 2)
    assert ds.x_train.dtype == torch.float32
    # an integral replay size given as a float is that integer
    assert _avalanche(mem_size=20.0).strategy_kwargs == {"mem_size": 20}
