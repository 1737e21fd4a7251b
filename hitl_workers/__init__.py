"""hitl_workers: the *Request agent assistance* step as a distributed Celery system."""

__version__ = "0.1.0"
