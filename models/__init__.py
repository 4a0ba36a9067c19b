"""Scripts that build the project's own demo/reference ONNX models from package-registry artifacts."""
