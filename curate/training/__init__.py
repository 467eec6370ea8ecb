"""Fixed-budget CLIP training: scales (scales.py), the data a run reads (data.py), its batches
(batches.py), the loop (loop.py), checkpoints (checkpoint.py), and the commands built on them:
score.py (`curate score`), baseline.py (`curate baseline`), train_filter.py (`curate train-filter`).
"""
