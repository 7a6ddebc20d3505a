"""Running a trained model: the Classifier API, ONNX export and runtime, case diagnosis."""
