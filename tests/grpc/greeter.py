"""A gRPC server that answers /test.Greeter/Who with its tag (no protobuf: raw bytes).

Usage: greeter.py ADDRESS TAG   (ADDRESS like 127.0.0.1:0 or [::1]:0)
Prints the bound port on its first line, then serves until killed.
"""
import sys
from concurrent import futures

import grpc


def main():
    address, tag = sys.argv[1], sys.argv[2]

    def who(request, context):
        return tag.encode()

    handler = grpc.method_handlers_generic_handler(
        "test.Greeter", {"Who": grpc.unary_unary_rpc_method_handler(who)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(address)
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
