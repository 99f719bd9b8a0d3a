"""Looking inside a model and sharing it: the analysis behind the look-inside page (visualize.py) and the
page itself (viz_page.py), the Python scanner its code features use (pyscan.py), and export to ONNX,
torch.export and the browser playground (export.py, playground.py)."""
