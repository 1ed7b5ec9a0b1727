"""segtool: semantic segmentation from a folder of images and masks, on a laptop CPU."""

__version__ = "0.1.0"
