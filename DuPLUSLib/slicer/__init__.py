"""The Slicer side of the library: what the two scripted modules need beyond wiring their GUI.

The module files (``DuPLUSSegment.py``, ``DuPLUSPrognosis.py``) only declare the module, the
parameter node, the widget and the self-test; everything they do lives here, importable and tested
without Qt on the ``slicer-core`` wheel:

* :mod:`.install` - the Python packages each module's background work needs, installed after asking;
* :mod:`.segment_logic` - volume node in, segmentation node out, through the background worker;
* :mod:`.prognosis_logic` - EHR form (and tumour) in, readout table and Kaplan-Meier chart out;
* :mod:`.dicom` - the DICOM tags Slicer's database holds for a volume;
* :mod:`.self_test` - what the modules' self-tests need, and when they must skip.

Beside it, in the library: :mod:`DuPLUSLib.mrml` (nodes <-> arrays and files), :mod:`DuPLUSLib.cascade`
(the prompt dropdowns), :mod:`DuPLUSLib.segment_process` (the background-job runner) and
:mod:`DuPLUSLib.scripted_module` (Slicer's base classes, with stand-ins outside the application).
Nothing here imports Qt at module level.
"""
