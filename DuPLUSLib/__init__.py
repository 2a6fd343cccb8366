"""DuPLUS for 3D Slicer: the Slicer-free library behind the extension.

Text-prompted universal 3D segmentation (modality > region > structure prompts steering one network)
and head-and-neck prognosis, as plain Python: the Slicer modules, the ``duplus`` command and user
scripts all call this package. It never imports ``slicer`` or ``qt`` except in :mod:`DuPLUSLib.mrml`.

    from DuPLUSLib.inference import segment_file
    segment_file("ct.nrrd", ["CT/abdomen/liver", "CT/abdomen/spleen"], "ct.seg.nrrd")
"""

__version__ = "0.1.0"
