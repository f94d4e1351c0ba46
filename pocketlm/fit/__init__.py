"""`pocketlm fit`: a device budget in; the measured quality / latency / memory front and the best model
that fits out (budget.py, candidates.py, costmodel.py, store.py, pareto.py, search.py, report.py)."""
