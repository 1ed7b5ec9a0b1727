"""Training, evaluation and prediction as plain functions over typed configs."""
