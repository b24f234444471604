"""The engine of a run, shared by the side that starts runs and the side that executes
nodes: ``lifecycle`` (what follows an arrival and the end of a run), ``reconcile`` (what a
dead worker or a lost message left behind) and ``context`` (the run's shared state as a
node sees it)."""
