"""The label maps synthesis starts from: every voxel carries a tissue label, annotated or not.

A real segmentation labels the organs, not the fat, air and bone between them; synthesis needs
those too, or the space around the organs would be painted as one flat background. For a real CT
they are derived from the scan's own Hounsfield units (air outside the body, gas and lung inside,
fat, other soft tissue, other bone). Each label also carries a *family* (air, fat, fluid, soft,
vessel, bone, ...) from which the T1/T2-like MRI and PET models draw plausible values, and, for
CT, the median and spread of its real Hounsfield units.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..imageio import VolumeImage

__all__ = ["SourceLabelMap", "FAMILIES", "label_map_from_real_ct", "label_map_from_mni152"]

FAMILIES = ("air", "lung", "fat", "fluid", "soft", "muscle", "vessel", "bone", "marrow", "brain_grey", "brain_white", "csf")

# Derived background tissues of a real CT (values above any dataset's labels).
AIR_OUTSIDE, GAS_INSIDE, FAT, OTHER_SOFT, OTHER_BONE = 1001, 1002, 1003, 1004, 1005
_DERIVED_FAMILIES = {AIR_OUTSIDE: "air", GAS_INSIDE: "lung", FAT: "fat", OTHER_SOFT: "soft", OTHER_BONE: "bone"}

# Structure keys whose family cannot be read off Hounsfield units alone.
_FAMILY_BY_KEY = {
    "aorta": "vessel", "inferior_vena_cava": "vessel", "portal_splenic_vein": "vessel",
    "iliac_artery_left": "vessel", "iliac_artery_right": "vessel", "iliac_vein_left": "vessel",
    "iliac_vein_right": "vessel", "bladder": "fluid", "gallbladder": "fluid", "ventricles": "csf",
    "iliopsoas_left": "muscle", "iliopsoas_right": "muscle", "autochthon_left": "muscle",
    "autochthon_right": "muscle", "gluteus_maximus_left": "muscle", "gluteus_maximus_right": "muscle",
    "gluteus_medius_left": "muscle", "gluteus_medius_right": "muscle", "gluteus_minimus_left": "muscle",
    "gluteus_minimus_right": "muscle", "myocardium": "muscle", "spinal_cord": "soft",
}


@dataclass
class SourceLabelMap:
    """A full label map on its real geometry, and what each label is.

    ``structures`` names the annotated structures (ontology keys) and the label values that make
    each one up, in the modality and region the source was annotated for.
    """

    name: str
    labels: VolumeImage  # int16 [k, j, i]; 0 only where nothing is known
    family: dict[int, str]
    structures: dict[str, tuple[int, ...]]
    region: str
    ct_statistics: dict[int, tuple[float, float]] = field(default_factory=dict)  # value -> (median HU, spread HU)
    unannotated: dict[int, str] = field(default_factory=dict)  # value -> structure key, for values not trained on

    @property
    def values(self) -> list[int]:
        return sorted(self.family)

    def key_of(self, value: int) -> str | None:
        """The structure a label value belongs to, when exactly one does (PET reads organ names)."""
        owners = [k for k, values in self.structures.items() if value in values]
        return owners[0] if len(owners) == 1 else None

    def anatomy_of(self, value: int) -> str | None:
        """What a label value is, annotated or not (contrast phases read it)."""
        return self.key_of(value) or self.unannotated.get(value)


def label_map_from_real_ct(
    name: str,
    image: VolumeImage,
    labels: np.ndarray,
    structures: dict[str, tuple[int, ...]],
    region: str,
    unannotated: dict[str, tuple[int, ...]] | None = None,
) -> SourceLabelMap:
    """Complete a real CT's segmentation with tissues derived from its Hounsfield units.

    ``labels`` is the dataset's label map on ``image``'s voxels; every non-zero value is kept
    (annotated or not), and every unlabelled voxel becomes air, gas, fat, soft tissue or bone.
    ``unannotated`` names values that are not trained on (a mapping's ``unannotated``); their
    family is still read off their HU, so synthesis without contrast phases paints them as before.
    """
    hu = image.array.astype(np.float32)
    full = labels.astype(np.int16, copy=True)
    body = _body_mask(hu)
    unlabelled = full == 0
    full[unlabelled & ~body] = AIR_OUTSIDE
    inside = unlabelled & body
    full[inside & (hu < -400)] = GAS_INSIDE
    full[inside & (hu >= -400) & (hu < -30)] = FAT
    full[inside & (hu >= -30) & (hu < 180)] = OTHER_SOFT
    full[inside & (hu >= 180)] = OTHER_BONE
    statistics: dict[int, tuple[float, float]] = {}
    family: dict[int, str] = {}
    key_by_value = {v: k for k, values in structures.items() for v in values}
    for value in np.unique(full):
        value = int(value)
        if value == 0:
            continue
        voxels = hu[full == value]
        median = float(np.median(voxels))
        spread = float(np.subtract(*np.percentile(voxels, [75, 25])) / 1.35)  # robust standard deviation
        statistics[value] = (median, max(spread, 5.0))
        family[value] = _DERIVED_FAMILIES.get(value) or _FAMILY_BY_KEY.get(key_by_value.get(value, ""), "") or _family_from_hu(median)
    names = {v: key for key, values in (unannotated or {}).items() for v in values}
    return SourceLabelMap(name, image.with_array(full), family, structures, region, statistics, names)


def _body_mask(hu: np.ndarray) -> np.ndarray:
    """The patient: the largest connected region above -400 HU, with its holes (bowel gas, lungs) filled."""
    above = hu > -400
    components, count = ndimage.label(above)
    if count == 0:
        return above
    sizes = ndimage.sum_labels(above, components, index=np.arange(1, count + 1))
    body = components == (1 + int(np.argmax(sizes)))
    # fill holes slice by slice: a scan cut through the lungs leaves them open at the ends in 3D
    return np.stack([ndimage.binary_fill_holes(s) for s in body])


def _family_from_hu(median: float) -> str:
    if median < -500:
        return "lung"
    if median < -30:
        return "fat"
    if median < 140:
        return "soft"
    return "bone"


def label_map_from_mni152() -> SourceLabelMap:
    """The MNI152 brain as a label map: grey and white matter, CSF, and the head around the brain
    split by T1 intensity into soft-tissue-like, fat-like (bright) and bone-like (dark) tissue.

    Taken at 2 mm (every second voxel of the 1 mm template): finer than the model's grid.
    """
    from ..phantoms.mni import load_template

    template = load_template()
    step = (slice(None, None, 2),) * 3
    t1 = template.t1[step]
    brain = template.brain[step]
    grey = template.grey_matter[step] & brain
    white = template.white_matter[step] & brain & ~grey
    csf = brain & ~grey & ~white
    head = np.stack([ndimage.binary_fill_holes(s) for s in (t1 > 0.05 * float(t1.max()))])
    outside_brain = head & ~brain
    bright, dark = np.percentile(t1[outside_brain], [70, 30])
    labels = np.full(t1.shape, 8, np.int16)  # air around the head
    labels[outside_brain] = 5
    labels[outside_brain & (t1 >= bright)] = 6
    labels[outside_brain & (t1 <= dark)] = 7
    labels[csf] = 3
    labels[white] = 2
    labels[grey] = 1
    family = {1: "brain_grey", 2: "brain_white", 3: "csf", 5: "soft", 6: "fat", 7: "bone", 8: "air"}
    structures = {"brain": (1, 2, 3), "grey_matter": (1,), "white_matter": (2,)}
    affine = template.ijk_to_lps @ np.diag([2.0, 2.0, 2.0, 1.0])
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    geometry = VolumeImage(
        array=np.ascontiguousarray(labels.transpose(2, 1, 0)),  # [x, y, z] -> [k, j, i]
        spacing=tuple(spacing),
        origin=tuple(affine[:3, 3]),
        direction=affine[:3, :3] / spacing,
    )
    return SourceLabelMap("mni152", geometry, family, structures, "brain")
