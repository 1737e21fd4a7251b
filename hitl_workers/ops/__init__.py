"""The commands people run, apart from the runtime: ``hitl-workers status`` (``status``),
``show`` (``show``), ``run`` (``run``, with ``processes`` to start and stop the system's
processes), ``simulate`` (``simulate``, with ``flow_engine``: a stand-in flow engine that
listens for exit messages). The tests and the benchmarks start processes with ``processes`` too.
"""
