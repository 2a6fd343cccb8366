"""Training, adaptation and evaluation of DuPLUS models: ``duplus train``, ``finetune``, ``evaluate``."""
