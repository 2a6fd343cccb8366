"""Label-driven synthesis: training images of any modality drawn from a few real label maps.

In the spirit of SynthSeg (Billot et al., Medical Image Analysis 2023): a label map is deformed,
scaled and cropped at random, then each label is painted with an intensity drawn for the target
modality (CT from the real Hounsfield statistics of that label, MRI with T1-, T2-like or random
contrasts, PET uptake, ultrasound echogenicity and speckle) and the image is degraded as a scanner
would (bias field, slice thickness, blur, noise). One real abdominal CT then teaches CT, MRI, PET
and ultrasound of that anatomy, and the network learns shapes and neighbourhoods instead of one
scan's grey values.
"""

from .generator import SYNTHESIS_OPTIONS, SynthesisOption, SynthesisSettings, synthesise
from .labelmap import SourceLabelMap, label_map_from_mni152, label_map_from_real_ct

__all__ = ["SYNTHESIS_OPTIONS", "SourceLabelMap", "SynthesisOption", "SynthesisSettings", "label_map_from_mni152",
           "label_map_from_real_ct", "synthesise"]
