"""``duplus serve``: the segmentation worker behind HTTP, for a GPU server and thin clients.

* :mod:`.protocol` - what client and server agree on (versions, headers, formats, errors); standard
  library only, so the Slicer client imports it without PyTorch or a web framework;
* :mod:`.jobs` - the job queue: uploads on disk, one job at a time through the warm
  :class:`~DuPLUSLib.worker.Worker`, cancellation, temporary files removed;
* :mod:`.app` - the FastAPI application: endpoints, API key, limits, logs;
* :mod:`.cli` - the ``duplus serve`` command: checks the settings, loads the model, runs uvicorn.

The client half is :mod:`DuPLUSLib.remote`. Importing this package imports nothing heavy.
"""
