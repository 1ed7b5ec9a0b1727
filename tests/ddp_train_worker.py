"""Started by tests/test_distributed.py under torchrun: train a config, then save this
rank's copy of the trained weights as rank<N>.weights next to the run."""

import os
import sys
from pathlib import Path

import torch

from segtool.config import load_config
from segtool.training.loop import train

result = train(load_config(Path(sys.argv[1])), Path(sys.argv[2]), progress=False)
torch.save(result.model.state_dict(), Path(sys.argv[2]) / f"rank{os.environ['RANK']}.weights")
