"""Shifts: what changes between phases — labels, the class prior, or the inputs.

>>> import shiftsim as ss
>>> ss.LabelFlip(1.0, mode="permute").label_kind, ss.LabelFlip(0.8, mode="permute").label_kind
('concept', 'concept + noise')
>>> ss.GaussianNoise(severity=2).std
0.06
"""

from .base import SHIFT_TYPES, Shift, shift_from_dict
from .inputs import (
    Brightness,
    Contrast,
    FeatureOffset,
    FeatureScale,
    GaussianBlur,
    GaussianNoise,
    PixelPermutation,
    Rotate,
)
from .label import FLIP_MODES, ClassPrior, LabelFlip, derangement

__all__ = ["SHIFT_TYPES", "Shift", "shift_from_dict", "Brightness", "Contrast", "FeatureOffset",
           "FeatureScale", "GaussianBlur", "GaussianNoise", "PixelPermutation", "Rotate",
           "FLIP_MODES", "ClassPrior", "LabelFlip", "derangement"]
