"""Training and evaluation runs: the iteration-based trainer (one process or torch.distributed),
checkpoints with resume, EMA, and the paper's evaluation protocol over datasets."""
