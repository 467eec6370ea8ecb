"""curate: which training data gives reliable CLIP models?

The data flow is the architecture: ingest -> pool -> embed -> build-pool -> candidate pool
-> score -> results -> leaderboard/report. Each arrow is a file format on disk; see
:mod:`curate.core.layout` for where every file lives.
"""

__version__ = "0.1.0"
