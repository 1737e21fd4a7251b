"""The Celery tasks. Importing any of them imports the app first.

``hitl_workers.app`` creates the app and then imports every task module, and every task module
imports ``app`` from it. Entering through a task module (``from hitl_workers.tasks.common
import in_transaction`` in a script or a test) would otherwise start that cycle in the middle:
``app`` would import ``tasks.agents``, which imports the half-initialised ``tasks.common``
and fails. Loading the app here, before any task module, always starts the cycle at its top.
"""

import hitl_workers.app  # noqa: F401
