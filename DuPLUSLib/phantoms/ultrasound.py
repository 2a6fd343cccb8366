"""Ultrasound imaging model (speckle, shadowing, fan): in progress."""

from __future__ import annotations


class UltrasoundModel:
    def __init__(self, rng, region, shift):
        raise NotImplementedError("ultrasound phantoms are not written yet")
