"""Training and export (the train extra): the loop over a run state, the `auto`
decisions, schedule and time budget, losses, EMA, calibration, torchrun, export."""
