"""The one adapter between the library and Slicer's MRML scene.

Everything else in :mod:`DuPLUSLib` works on files and :class:`~DuPLUSLib.imageio.VolumeImage`
arrays in LPS; this module turns a volume node into such an image (the RAS -> LPS flip happens here
and nowhere else) and a ``.seg.nrrd`` written by the engine back into a segmentation node. It needs
only the MRML classes, so it runs on the ``slicer-core`` wheel as well as inside Slicer; the tests
exercise it on real nodes there.

Import rules the Slicer module relies on:

* nothing changes in the scene until the result file has been read and checked, so a failed or
  refused import leaves the scene as it was;
* segments already in a target segmentation are never overwritten silently: a name clash is an
  :class:`~DuPLUSLib.errors.OutputPathError` unless ``replace=True``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from .errors import InputImageError, OutputPathError
from .imageio import VolumeImage
from .preprocessing import check_direction

__all__ = [
    "IMPORTED_STRUCTURE_TAG",
    "ImportedSegment",
    "clashing_segment_names",
    "check_output_segmentation",
    "check_volume_node",
    "import_segmentation",
    "is_segmentation_of",
    "imported_segments",
    "volume_image_from_node",
    "volume_node_from_image",
]

# Written by the engine into every segment of its .seg.nrrd; the ontology key of the structure.
IMPORTED_STRUCTURE_TAG = "DuPLUS.Structure"
CONFIDENCE_TAG = "DuPLUS.Confidence"

# Slicer stores directions in RAS, the library in LPS: the two differ by the sign of x and y.
_RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class ImportedSegment:
    """What one segment of a segmentation node says about itself (for logs, reports and tests)."""

    segment_id: str
    name: str
    color: tuple[float, float, float]
    terminology: str
    structure: str | None
    confidence: float | None


def _slicer():
    import slicer  # imported late: importing this module must not require Slicer

    return slicer


# ------------------------------------------------------------------------------ volume -> image
def check_volume_node(node) -> None:
    """Refuse, with a message the user can act on, what the engine cannot segment: no node, a label
    map or segmentation picked as input, a multi-component (e.g. 4D or colour) volume, a 2D image,
    an empty one, sheared axes. Copies no voxels, so the module can run it for its tooltip."""
    slicer = _slicer()
    if node is None:
        raise InputImageError("no input volume selected; load a volume and select it as input")
    if isinstance(node, slicer.vtkMRMLLabelMapVolumeNode):
        raise InputImageError(
            f"'{node.GetName()}' is a label map; select the grey-level image it was drawn on as input"
        )
    if not isinstance(node, slicer.vtkMRMLScalarVolumeNode):
        raise InputImageError(
            f"'{node.GetName()}' is a {node.GetClassName()}, not a scalar volume; select a CT, MRI, "
            "PET or ultrasound volume as input"
        )
    image_data = node.GetImageData()
    if image_data is None or image_data.GetNumberOfPoints() == 0:
        raise InputImageError(f"volume '{node.GetName()}' holds no voxels")
    components = image_data.GetNumberOfScalarComponents()
    if components != 1:
        kind = "a 4D (multi-frame) or multi-channel" if components > 4 else "a colour or vector"
        raise InputImageError(
            f"'{node.GetName()}' is {kind} volume with {components} components per voxel; "
            "extract one 3D frame (or a grey-level channel) first"
        )
    dimensions = image_data.GetDimensions()
    if min(dimensions) < 2:
        raise InputImageError(
            f"'{node.GetName()}' is a 2D image ({'x'.join(map(str, dimensions))}); a 3D volume is needed"
        )
    directions_ras = np.zeros((3, 3))
    node.GetIJKToRASDirections(directions_ras)
    check_direction(directions_ras, f"'{node.GetName()}'")


def volume_image_from_node(node) -> VolumeImage:
    """The voxels and LPS geometry of a scalar volume node, ready for :func:`imageio.write_image`,
    after :func:`check_volume_node`. The node's own IJK-to-RAS matrix is used (directions
    included); a parent transform is not applied, so the result is placed under the same
    transform on import.
    """
    check_volume_node(node)
    slicer = _slicer()
    array = np.array(slicer.util.arrayFromVolume(node), copy=True)
    directions_ras = np.zeros((3, 3))
    node.GetIJKToRASDirections(directions_ras)
    origin_ras = np.array(node.GetOrigin(), dtype=float)
    return VolumeImage(
        array=array,
        spacing=tuple(node.GetSpacing()),
        origin=tuple(_RAS_FROM_LPS @ origin_ras),
        direction=_RAS_FROM_LPS @ directions_ras,
        metadata={"Slicer.NodeName": node.GetName()},
    )


def volume_node_from_image(image: VolumeImage, name: str = "Volume", scene=None):
    """A new scalar volume node with ``image``'s voxels and geometry (the inverse of the above)."""
    slicer = _slicer()
    scene = scene or slicer.mrmlScene
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetSpacing(*image.spacing)
    node.SetOrigin(*(_RAS_FROM_LPS @ np.asarray(image.origin)))
    node.SetIJKToRASDirections(_RAS_FROM_LPS @ image.direction)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(image.array))
    node.CreateDefaultDisplayNodes()
    return node


# ------------------------------------------------------------------------ .seg.nrrd -> segmentation
def imported_segments(segmentation_node) -> list[ImportedSegment]:
    """Every segment of a segmentation node with its name, colour, terminology and DuPLUS tags."""
    import vtk

    segmentation = segmentation_node.GetSegmentation()
    segments = []
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        structure, confidence, terminology = vtk.reference(""), vtk.reference(""), vtk.reference("")
        has_structure = segment.GetTag(IMPORTED_STRUCTURE_TAG, structure)
        has_confidence = segment.GetTag(CONFIDENCE_TAG, confidence)
        # The terminology through its tag: vtkSegment.GetTerminology() only exists from Slicer 5.9
        # (2025-03); the tag and GetTerminologyEntryTagName() exist in every version.
        has_terminology = segment.GetTag(segment.GetTerminologyEntryTagName(), terminology)
        segments.append(
            ImportedSegment(
                segment_id=segmentation.GetNthSegmentID(index),
                name=segment.GetName(),
                color=tuple(segment.GetColor()),
                terminology=str(terminology) if has_terminology else "",
                structure=str(structure) if has_structure else None,
                confidence=float(str(confidence)) if has_confidence and str(confidence) else None,
            )
        )
    return segments


def clashing_segment_names(segmentation_node, names: Iterable[str]) -> list[str]:
    """Names among ``names`` that the node already has (compared ignoring case)."""
    if segmentation_node is None:
        return []
    existing = {segment.name.lower() for segment in imported_segments(segmentation_node)}
    return [name for name in names if name.lower() in existing]


def check_output_segmentation(segmentation_node, volume_node) -> None:
    """Refuse an output segmentation whose segments would not line up with a result for
    ``volume_node``: one under another parent transform (``None``: a new node, always fine).

    Checked before a run starts, so the user learns it before waiting for the model, and again on
    import."""
    if segmentation_node is not None and segmentation_node.GetTransformNodeID() != volume_node.GetTransformNodeID():
        raise OutputPathError(
            f"segmentation '{segmentation_node.GetName()}' is under another transform than the volume "
            f"'{volume_node.GetName()}', so its segments and the new ones would not line up; "
            "choose a new output segmentation, or put both under the same transform first"
        )


def is_segmentation_of(segmentation_node, volume_node) -> bool:
    """Whether ``segmentation_node`` was made on ``volume_node`` (its reference geometry), so that
    adding a result for that volume to it is what the user expects."""
    role = segmentation_node.GetReferenceImageGeometryReferenceRole()
    return segmentation_node.GetNodeReference(role) is volume_node


def import_segmentation(
    seg_path: str | os.PathLike[str],
    reference_volume_node,
    segmentation_node=None,
    replace: bool = False,
    name: str | None = None,
    show_3d: bool = False,
):
    """Load an engine ``.seg.nrrd`` into a segmentation node and return that node.

    With ``segmentation_node=None`` a new node named after the input volume is made; otherwise the
    segments are added to the given node. A segment whose name the node already has is refused
    with :class:`OutputPathError` unless ``replace=True``, which swaps it in at the same place.
    Segments keep the file's names, colours, terminology and ``DuPLUS.*`` tags. A new node takes the
    input volume as reference geometry and parent transform, and is put beside the input in the
    subject hierarchy (under its study) when the scene has one. A given node keeps its own transform
    and place: moving it would move the segments already in it, so a node under another transform
    than the input's is refused with :class:`OutputPathError`.
    """
    slicer = _slicer()
    if reference_volume_node is None:
        raise InputImageError("no reference volume given for the segmentation")
    scene = reference_volume_node.GetScene() or slicer.mrmlScene
    loaded = _read_segmentation_file(seg_path)
    incoming = loaded.GetSegmentation()
    incoming_ids = [incoming.GetNthSegmentID(i) for i in range(incoming.GetNumberOfSegments())]
    if not incoming_ids:
        raise InputImageError(f"'{seg_path}' holds no segments")
    incoming_names = [incoming.GetSegment(segment_id).GetName() for segment_id in incoming_ids]
    clashes = clashing_segment_names(segmentation_node, incoming_names)
    if clashes and not replace:
        raise OutputPathError(
            f"segmentation '{segmentation_node.GetName()}' already has segment(s) "
            f"{', '.join(clashes)}; choose a new output segmentation, or confirm replacing them"
        )

    check_output_segmentation(segmentation_node, reference_volume_node)

    # Everything is read and checked: from here on the scene changes.
    created = segmentation_node is None
    if created:
        segmentation_node = scene.AddNewNodeByClass(
            "vtkMRMLSegmentationNode", name or f"{reference_volume_node.GetName()} segmentation"
        )
        segmentation_node.CreateDefaultDisplayNodes()
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume_node)
    elif not _has_reference_geometry(segmentation_node):
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume_node)
    target = segmentation_node.GetSegmentation()
    replaced_positions = _remove_segments_named(segmentation_node, clashes) if clashes else {}
    for segment_id, segment_name in zip(incoming_ids, incoming_names):
        before = {target.GetNthSegmentID(i) for i in range(target.GetNumberOfSegments())}
        if not target.CopySegmentFromSegmentation(incoming, segment_id, False):
            raise InputImageError(f"could not copy segment '{segment_name}' from '{seg_path}'")
        new_ids = [target.GetNthSegmentID(i) for i in range(target.GetNumberOfSegments())]
        added = next(i for i in new_ids if i not in before)
        if segment_name.lower() in replaced_positions:
            target.SetSegmentIndex(added, replaced_positions[segment_name.lower()])
    if created:
        segmentation_node.SetAndObserveTransformNodeID(reference_volume_node.GetTransformNodeID())
        _place_beside_in_hierarchy(segmentation_node, reference_volume_node)
    if show_3d:
        segmentation_node.CreateClosedSurfaceRepresentation()
    return segmentation_node


def _read_segmentation_file(seg_path: str | os.PathLike[str]):
    """Read the file into a node of a private scratch scene, so the user's scene is untouched."""
    slicer = _slicer()
    path = os.fspath(seg_path)
    if not os.path.isfile(path):
        raise InputImageError(f"segmentation result '{path}' does not exist")
    scratch = slicer.vtkMRMLScene()
    node = scratch.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(path)
    if not storage.ReadData(node):
        raise InputImageError(f"cannot read '{path}' as a segmentation")
    node._duplus_scratch_scene = scratch  # keep the scene alive as long as the node is used
    return node


def _has_reference_geometry(segmentation_node) -> bool:
    """Whether the node already has a reference geometry (set from a volume or in its parameters)."""
    role = segmentation_node.GetReferenceImageGeometryReferenceRole()
    if segmentation_node.GetNodeReference(role) is not None:
        return True
    # Read the serialised parameters rather than asking for the value: a missing one logs an error.
    slicer = _slicer()
    name = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    serialized = segmentation_node.GetSegmentation().SerializeAllConversionParameters()
    for entry in serialized.split("&"):
        parts = entry.split("|")
        if parts[0] == name and len(parts) > 1 and parts[1]:
            return True
    return False


def _remove_segments_named(segmentation_node, names: Sequence[str]) -> dict[str, int]:
    """Remove the segments with these names; returns each name's former position."""
    segmentation = segmentation_node.GetSegmentation()
    wanted = {name.lower() for name in names}
    positions: dict[str, int] = {}
    for index in reversed(range(segmentation.GetNumberOfSegments())):
        segment = segmentation.GetNthSegment(index)
        if segment.GetName().lower() in wanted:
            positions[segment.GetName().lower()] = index
            segmentation.RemoveSegment(segmentation.GetNthSegmentID(index))
    return positions


def _place_beside_in_hierarchy(segmentation_node, volume_node) -> None:
    """Put the result under the input volume's study; quietly skipped where there is no hierarchy."""
    slicer = _slicer()
    scene = volume_node.GetScene()
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene) if scene else None
    if hierarchy is None:
        return
    invalid = slicer.vtkMRMLSubjectHierarchyNode.GetInvalidItemID()
    volume_item = hierarchy.GetItemByDataNode(volume_node)
    if volume_item == invalid:
        return  # no hierarchy entry for the input (headless scenes do not create them)
    parent = hierarchy.GetItemParent(volume_item)
    if parent in (invalid, hierarchy.GetSceneItemID()):
        return
    segmentation_item = hierarchy.GetItemByDataNode(segmentation_node)
    if segmentation_item == invalid:
        hierarchy.CreateItem(parent, segmentation_node)
    else:
        hierarchy.SetItemParent(segmentation_item, parent)
