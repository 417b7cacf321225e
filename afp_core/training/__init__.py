"""Contrastive training of fingerprint models (paper §2.1-2.2, §4.3).

``data`` (songs, splits, caches, Algorithm 1 batches), ``loss`` (NT-Xent), ``optim``
(LAMB, cosine schedule), ``trainer`` (epochs, checkpoints, resume, validation),
``config`` (the YAML layout), ``irs`` (synthetic impulse responses).
"""
