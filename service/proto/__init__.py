"""Generated protobuf and gRPC modules of prerank.proto (regenerate with grpc_tools.protoc; see the .proto)."""
