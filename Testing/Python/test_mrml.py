"""The MRML adapter on real slicer-core nodes: volume node -> image -> file, and .seg.nrrd -> node."""

from __future__ import annotations

import numpy as np
import pytest

from DuPLUSLib.errors import InputImageError, OutputPathError
from DuPLUSLib.imageio import SegmentMask, read_image, write_image, write_segmentation
from DuPLUSLib.ontology import load_ontology

slicer = pytest.importorskip("slicer")
mrml = pytest.importorskip("DuPLUSLib.mrml")

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def oblique_ijk_to_ras() -> np.ndarray:
    """A rotated, anisotropic, off-origin voxel grid: what makes axis mistakes visible."""
    angle = np.deg2rad(30)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]]
    )
    flip_k = np.diag([1.0, 1.0, -1.0])  # a left-handed grid, as some scanners write
    matrix = np.eye(4)
    matrix[:3, :3] = rotation @ flip_k @ np.diag([0.8, 1.1, 2.5])
    matrix[:3, 3] = [12.5, -40.0, 73.0]
    return matrix


def add_oblique_volume(shape_kji=(6, 7, 8), name="oblique"):
    array = np.arange(np.prod(shape_kji), dtype=np.int16).reshape(shape_kji)
    return slicer.util.addVolumeFromArray(array, ijkToRAS=oblique_ijk_to_ras(), name=name)


# ------------------------------------------------------------------------------ volume -> image
def test_volume_node_becomes_an_lps_image_with_the_same_voxels(mrml_scene):
    node = add_oblique_volume()
    image = mrml.volume_image_from_node(node)
    np.testing.assert_array_equal(image.array, slicer.util.arrayFromVolume(node))
    np.testing.assert_allclose(image.ijk_to_lps, LPS_FROM_RAS @ oblique_ijk_to_ras(), atol=1e-9)


def test_written_volume_puts_every_voxel_where_slicer_shows_it(mrml_scene, tmp_path):
    import SimpleITK as sitk

    node = add_oblique_volume()
    path = write_image(mrml.volume_image_from_node(node), tmp_path / "input.nrrd")
    itk = sitk.ReadImage(str(path))
    for ijk in [(0, 0, 0), (7, 0, 0), (0, 6, 0), (0, 0, 5), (7, 6, 5)]:
        lps = np.array(itk.TransformIndexToPhysicalPoint(ijk))
        ras = oblique_ijk_to_ras() @ np.array([*ijk, 1.0])
        np.testing.assert_allclose(lps, (LPS_FROM_RAS @ ras)[:3], atol=1e-4)
    assert itk[7, 6, 5] == slicer.util.arrayFromVolume(node)[5, 6, 7]


def test_image_round_trips_through_a_new_volume_node(mrml_scene, tmp_path):
    node = add_oblique_volume()
    image = mrml.volume_image_from_node(node)
    again = mrml.volume_image_from_node(mrml.volume_node_from_image(image, "copy"))
    assert again.same_geometry(image)
    np.testing.assert_array_equal(again.array, image.array)
    reread = read_image(write_image(image, tmp_path / "x.nii.gz"))
    assert reread.same_geometry(image)


def test_no_volume_is_refused(mrml_scene):
    with pytest.raises(InputImageError, match="no input volume"):
        mrml.volume_image_from_node(None)


def test_label_map_as_input_is_refused(mrml_scene):
    labels = slicer.util.addVolumeFromArray(
        np.zeros((4, 4, 4), np.uint8), name="labels", nodeClassName="vtkMRMLLabelMapVolumeNode"
    )
    with pytest.raises(InputImageError, match="label map"):
        mrml.volume_image_from_node(labels)


def test_two_dimensional_volume_is_refused(mrml_scene):
    flat = slicer.util.addVolumeFromArray(np.ones((1, 32, 32), np.int16), name="slice")
    with pytest.raises(InputImageError, match="2D"):
        mrml.volume_image_from_node(flat)


def test_four_dimensional_volume_is_refused(mrml_scene):
    frames = slicer.util.addVolumeFromArray(
        np.ones((4, 5, 6, 10), np.float32), name="dynamic", nodeClassName="vtkMRMLVectorVolumeNode"
    )
    with pytest.raises(InputImageError, match="4D"):
        mrml.volume_image_from_node(frames)


def test_volume_without_voxels_is_refused(mrml_scene):
    empty = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(InputImageError, match="no voxels"):
        mrml.volume_image_from_node(empty)


def test_segmentation_node_as_input_is_refused(mrml_scene):
    segmentation = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    with pytest.raises(InputImageError, match="not a scalar volume"):
        mrml.volume_image_from_node(segmentation)


# ------------------------------------------------------------------------ .seg.nrrd -> segmentation
@pytest.fixture
def engine_result(mrml_scene, tmp_path):
    """A volume node and a .seg.nrrd written by the engine's writer in its geometry (liver with a
    tumour inside it, so the file has two layers)."""
    ontology = load_ontology()
    node = add_oblique_volume(shape_kji=(10, 12, 14))
    image = mrml.volume_image_from_node(node)
    liver = np.zeros(image.array.shape, bool)
    liver[2:8, 3:9, 4:12] = True
    tumour = np.zeros(image.array.shape, bool)
    tumour[4:6, 5:7, 6:8] = True
    segments = [
        SegmentMask(ontology.structures["liver"], liver, 0.91),
        SegmentMask(ontology.structures["liver_tumour"], tumour, 0.62),
    ]
    path = write_segmentation(segments, image, tmp_path / "result.seg.nrrd")
    return node, path, {"liver": liver, "liver_tumour": tumour}


def test_imported_segments_carry_names_colours_terminology_and_tags(engine_result):
    volume, path, _ = engine_result
    ontology = load_ontology()
    node = mrml.import_segmentation(path, volume)
    segments = {s.structure: s for s in mrml.imported_segments(node)}
    assert list(segments) == ["liver", "liver_tumour"]
    for key, segment in segments.items():
        structure = ontology.structures[key]
        assert segment.name == structure.name
        np.testing.assert_allclose(segment.color, structure.color_float, atol=1e-3)
        assert segment.terminology == structure.terminology.as_slicer_tag()
    assert segments["liver"].confidence == pytest.approx(0.91)


def test_imported_masks_lie_on_the_input_voxels(engine_result):
    volume, path, masks = engine_result
    node = mrml.import_segmentation(path, volume)
    for segment in mrml.imported_segments(node):
        array = slicer.util.arrayFromSegmentBinaryLabelmap(node, segment.segment_id, volume)
        np.testing.assert_array_equal(array.astype(bool), masks[segment.structure])


def test_imported_node_uses_the_input_as_reference_geometry(engine_result):
    volume, path, _ = engine_result
    node = mrml.import_segmentation(path, volume)
    role = node.GetReferenceImageGeometryReferenceRole()
    assert node.GetNodeReference(role) is volume
    assert node.GetName() == "oblique segmentation"


def test_existing_segments_are_not_overwritten_silently(engine_result):
    volume, path, _ = engine_result
    existing = mrml_scene_of(volume).AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    existing.GetSegmentation().AddEmptySegment("hand_drawn", "liver")
    with pytest.raises(OutputPathError, match="already has segment"):
        mrml.import_segmentation(path, volume, segmentation_node=existing)
    assert [s.name for s in mrml.imported_segments(existing)] == ["liver"]
    assert existing.GetSegmentation().GetSegment("hand_drawn") is not None


def test_replace_swaps_the_clashing_segment_in_place(engine_result):
    volume, path, masks = engine_result
    existing = mrml_scene_of(volume).AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    existing.GetSegmentation().AddEmptySegment("first", "first")
    existing.GetSegmentation().AddEmptySegment("hand_drawn", "liver")
    existing.GetSegmentation().AddEmptySegment("last", "last")
    mrml.import_segmentation(path, volume, segmentation_node=existing, replace=True)
    names = [s.name for s in mrml.imported_segments(existing)]
    assert names == ["first", "liver", "last", "liver tumour"]
    liver = next(s for s in mrml.imported_segments(existing) if s.name == "liver")
    assert liver.structure == "liver"
    assert slicer.util.arrayFromSegmentBinaryLabelmap(existing, liver.segment_id, volume).sum() == masks["liver"].sum()


def test_segments_are_added_to_an_existing_node_beside_its_own(engine_result):
    volume, path, _ = engine_result
    existing = mrml_scene_of(volume).AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    existing.GetSegmentation().AddEmptySegment("Segment_liver", "my organ")
    node = mrml.import_segmentation(path, volume, segmentation_node=existing)
    assert node is existing
    names = [s.name for s in mrml.imported_segments(existing)]
    assert names[0] == "my organ" and len(names) == 3
    assert len({s.segment_id for s in mrml.imported_segments(existing)}) == 3


def test_a_missing_result_file_leaves_the_scene_unchanged(mrml_scene, tmp_path):
    volume = add_oblique_volume()
    before = mrml_scene.GetNumberOfNodes()
    with pytest.raises(InputImageError, match="does not exist"):
        mrml.import_segmentation(tmp_path / "nothing.seg.nrrd", volume)
    assert mrml_scene.GetNumberOfNodes() == before


def test_result_lands_under_the_input_study_in_the_subject_hierarchy(engine_result):
    volume, path, _ = engine_result
    scene = mrml_scene_of(volume)
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "patient")
    study = hierarchy.CreateStudyItem(patient, "study")
    hierarchy.CreateItem(study, volume)
    node = mrml.import_segmentation(path, volume)
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == study


def test_result_follows_the_input_parent_transform(engine_result):
    volume, path, _ = engine_result
    transform = mrml_scene_of(volume).AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    volume.SetAndObserveTransformNodeID(transform.GetID())
    node = mrml.import_segmentation(path, volume)
    assert node.GetTransformNodeID() == transform.GetID()


def test_closed_surface_is_made_when_3d_is_asked_for(engine_result):
    volume, path, _ = engine_result
    node = mrml.import_segmentation(path, volume, show_3d=True)
    surface = slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName()
    assert node.GetSegmentation().ContainsRepresentation(surface)


def mrml_scene_of(node):
    return node.GetScene()


def test_an_existing_node_under_another_transform_is_refused_and_left_where_it_is(engine_result):
    volume, path, _ = engine_result
    scene = mrml_scene_of(volume)
    registration = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    existing = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    existing.SetAndObserveTransformNodeID(registration.GetID())
    existing.GetSegmentation().AddEmptySegment("hand_drawn", "my organ")
    with pytest.raises(OutputPathError, match="another transform"):
        mrml.import_segmentation(path, volume, segmentation_node=existing)
    assert existing.GetTransformNodeID() == registration.GetID()
    assert [s.name for s in mrml.imported_segments(existing)] == ["my organ"]


def test_an_existing_node_keeps_its_place_in_the_subject_hierarchy(engine_result):
    volume, path, _ = engine_result
    scene = mrml_scene_of(volume)
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "patient")
    hierarchy.CreateItem(hierarchy.CreateStudyItem(patient, "study"), volume)
    folder = hierarchy.CreateFolderItem(hierarchy.GetSceneItemID(), "my work")
    existing = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    hierarchy.CreateItem(folder, existing)
    mrml.import_segmentation(path, volume, segmentation_node=existing)
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(existing)) == folder


def test_a_segmentation_knows_the_volume_it_was_made_on(engine_result):
    volume, path, _ = engine_result
    node = mrml.import_segmentation(path, volume)
    other = add_oblique_volume(shape_kji=(4, 5, 6))
    assert mrml.is_segmentation_of(node, volume)
    assert not mrml.is_segmentation_of(node, other)
