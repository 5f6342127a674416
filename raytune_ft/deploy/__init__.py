"""What ships and how it is measured: export to torch.export / ONNX (`export`), latency re-timed
after the search (`remeasure`), and the test split evaluated once on the deployed files
(`holdout`: Wilson intervals, McNemar tests). Only this layer and the quantization family import
`onnxruntime`.
"""
