"""What an evaluation reports: the report itself, CI gates, the HTML page, plots and
TensorBoard logs, and evaluation over a split on ONNX Runtime (torch-free) and PyTorch."""
