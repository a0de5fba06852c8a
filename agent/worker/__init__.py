"""The untrusted agent process (``python -m agent.worker``): the model and the errand loop.

Everything here runs under the model's control, in a scrubbed environment and
(on Linux) inside bubblewrap. It speaks :mod:`agent.protocol` on its
stdin/stdout, learns the tools it may call from the host's
:class:`agent.protocol.ToolOffer` list, and imports nothing from
:mod:`agent.host`, ``vault`` (except the handle type) or ``memory``.
"""
