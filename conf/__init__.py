"""cycleqd's Hydra configs: one folder per config group, installed as the package's configs."""
