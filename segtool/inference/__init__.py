"""Prediction without torch: preprocessing and postprocessing, the ONNX Runtime model,
backends, file and video outputs. Importing any module here except through the torch
backend (segtool.inference.torch_backend, loaded only for .pt checkpoints) loads no torch."""
