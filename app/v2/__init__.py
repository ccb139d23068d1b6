"""The Open Inference Protocol v2 (KServe, Triton): the model's tensors, REST and gRPC bindings."""
