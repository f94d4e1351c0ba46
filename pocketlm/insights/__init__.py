"""The survey's insights reproduced on this device: one module per insight, each `run(out_dir, quick)`
returning a `Record` (the survey's claim, the measured numbers, agree / partly / disagree, wall time) and
writing a figure and a CSV. suite.py runs a selection in order; cli.py is `pocketlm insights`."""
