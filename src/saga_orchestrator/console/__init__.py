"""What the CLI shows and runs, kept out of :mod:`saga_orchestrator.cli` so it is testable:
:mod:`.timeline` renders an instance's history, :mod:`.demo` is the order saga of ``saga demo``.
"""
