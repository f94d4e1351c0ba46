"""The survey of small language models (Lu et al. 2024) as data plus the code that recomputes it.

catalog.py (entries -> ModelConfig), axes.py (the survey's axes and buckets), trends.py (Fig. 2 shares),
figures.py / capabilities.py (PNG + CSV), classify.py (place any HF config), build.py (seeded random weights),
cli.py (`pocketlm survey ...`, `pocketlm build`), demo.py (the demo section).
"""
