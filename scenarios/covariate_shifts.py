"""Covariate shifts: each input-shift family at a severity, entered abruptly or gradually,
then back to the clean inputs.

Three phases: clean, shifted (rotation, Gaussian noise, blur, contrast, brightness or a pixel
permutation; severity 1-5, the CIFAR-10-C constants where they exist), clean again (a repeat of
the first regime). Labels never change.

    shiftsim run scenarios/covariate_shifts.py --optimizer sgdm
"""

import shiftsim as ss
from shiftsim.study import Axis

FAMILIES = {
    "rotate": ss.Rotate,
    "noise": ss.GaussianNoise,
    "blur": ss.GaussianBlur,
    "contrast": ss.Contrast,
    "brightness": ss.Brightness,
    "pixels": ss.PixelPermutation,
}
TRANSITIONS = ("abrupt", "gradual")


def covariate(data, family="rotate", severity=3, transition="abrupt", steps_per_phase=300,
              width=None, batch_size=32, **kw):
    """Clean -> ``family`` at ``severity`` (abruptly, or over a ramp of ``width`` steps,
    default a third of the phase) -> clean again (entered the same way)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown covariate family {family!r}; allowed: {', '.join(FAMILIES)}")
    if transition not in TRANSITIONS:
        raise ValueError(f"unknown transition {transition!r}; allowed: abrupt, gradual")
    shift = FAMILIES[family](severity=severity)
    ramp = ss.Gradual(width or max(1, steps_per_phase // 3)) if transition == "gradual" \
        else ss.Abrupt()
    return ss.Scenario(data, [
        ss.Phase(steps_per_phase, name="clean"),
        ss.Phase(steps_per_phase, [shift], ramp, name=f"{family} {severity}"),
        ss.Phase(steps_per_phase, transition=ramp, repeat="clean", name="clean again"),
    ], batch_size=batch_size, name=f"{family}-{severity}-{transition}", **kw)


def axis(data, families=tuple(FAMILIES), severity=3, transitions=TRANSITIONS, prefix="",
         **kw):
    """A study axis: one scenario per family and transition, labelled ``family``
    ("rotate abrupt" ...) and ``severity``."""
    items, labels = {}, {}
    for fam in families:
        for tr in transitions:
            key = f"{prefix}{fam} {tr}"
            items[key] = covariate(data, fam, severity, tr, **kw)
            labels[key] = {"family": f"{fam} {tr}", "severity": float(severity)}
    return Axis(items, labels)


scenario = covariate(ss.data.digits(), "rotate", 3, "gradual")
