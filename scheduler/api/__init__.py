"""Generated gRPC API of wsched (package wsched.v1): see protos/ and protos/generate.py."""
