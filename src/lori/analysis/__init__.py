"""``lori analyze``: the low-rank structure of reasoning trajectories. ``measure.py`` measures (spectra, controls,
student overlap, probes) into ``analysis.json``; ``figures.py`` draws it; ``report.py`` writes ``report.md``."""
