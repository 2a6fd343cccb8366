"""The DICOM tags Slicer's database holds for a volume loaded from DICOM."""

from __future__ import annotations

__all__ = ["MODALITY_TAG", "BODY_PART_TAG", "dicom_tags"]

MODALITY_TAG = "0008,0060"
BODY_PART_TAG = "0018,0015"  # BodyPartExamined


def dicom_tags(volume_node, database=None) -> tuple[str | None, str | None]:
    """(Modality, BodyPartExamined) of a volume loaded from DICOM, or Nones when unknown.

    ``database`` defaults to ``slicer.dicomDatabase`` (absent outside the application). A volume
    from a file, or one whose instances the database no longer has, gives ``(None, None)``.
    """
    if volume_node is None:
        return None, None
    uids = (volume_node.GetAttribute("DICOM.instanceUIDs") or "").split()
    if database is None:
        import slicer

        database = getattr(slicer, "dicomDatabase", None)
    if not uids or database is None:
        return None, None
    file_name = database.fileForInstance(uids[0])
    if not file_name:
        return None, None
    return database.fileValue(file_name, MODALITY_TAG) or None, database.fileValue(file_name, BODY_PART_TAG) or None
