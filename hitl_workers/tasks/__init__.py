"""The Celery tasks: thin views over the use cases in ``hitl_workers.services``."""
