"""A proxyless gRPC client: resolves xds:/// targets through GRPC_XDS_BOOTSTRAP and calls
/test.Greeter/Who on each in a loop, printing one line per RPC:

    OK <target> <answer>
    ERR <target> <status code> <details>

Usage: client.py TARGET...   (runs until killed)
"""
import sys
import time

import grpc


def main():
    targets = sys.argv[1:]
    channels = {t: grpc.insecure_channel(t) for t in targets}
    calls = {t: c.unary_unary("/test.Greeter/Who") for t, c in channels.items()}
    resolved = set()
    while True:
        for target, call in calls.items():
            try:
                # Until a target first answers, wait for xDS to resolve it; after that,
                # every RPC must succeed on its own.
                answer = call(b"", timeout=10, wait_for_ready=target not in resolved)
                resolved.add(target)
                print(f"OK {target} {answer.decode()}", flush=True)
            except grpc.RpcError as error:
                print(f"ERR {target} {error.code().name} {error.details()}", flush=True)
        time.sleep(0.05)


if __name__ == "__main__":
    main()
