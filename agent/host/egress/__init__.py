"""The egress proxy: the only way out of a shell sandbox.

Each sandboxed command gets a Unix socket bound in; a small forwarder inside
(:mod:`agent.host.egress.forwarder`) gives programs a loopback ``HTTP(S)_PROXY``;
the host end (:mod:`agent.host.egress.proxy`) is mitmproxy run as a library, which
decides each request with the network rules, swaps ``cap_`` handles for
secrets on in-scope requests, and redacts every response.
"""
