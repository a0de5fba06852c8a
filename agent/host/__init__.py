"""The trusted host side of an errand: everything here runs in the Keyless process.

It holds the secrets' neighbourhood: it starts and watches the agent process
(:mod:`agent.host.supervisor`), decides every tool call the agent asks for
(:mod:`agent.host.policy`, :mod:`agent.host.dispatch`), runs the tools
(:mod:`agent.host.tools`, :mod:`agent.host.sandbox`, and the sandboxes' way
to the network, :mod:`agent.host.egress`), redacts and audits what
goes back (:mod:`agent.host.delivery`) and relays remote models
(:mod:`agent.host.relay`). It talks to the agent process only through
:mod:`agent.protocol` and imports nothing from :mod:`agent.worker`.
"""
