"""difysync: keep Dify knowledge bases (datasets) in step with folders on disk."""

__version__ = "0.1.0"
