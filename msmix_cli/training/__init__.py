"""Training and evaluation: one loop for every backbone and mixer, run directories, seeds and devices."""
