"""Views that answer "did NCM help, where, and why": the baseline-vs-NCM
comparison of one cloud (Open3D-ML's visualizer, or a headless PNG) and
heatmaps of target and predicted NCMs."""
