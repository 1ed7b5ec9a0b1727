"""MobileNetV2 encoder, decoder heads, and the segmenter that joins them."""

from segtool.models.segmenter import Segmenter, build_model

__all__ = ["Segmenter", "build_model"]
