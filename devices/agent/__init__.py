"""The reference device agent: registers with the portal, keeps one websocket open and runs commands.

It runs on customers' machines, so it imports only the standard library, `websockets`, `bcrypt`,
`cryptography` (for the vault's encryption, devices.agent.crypto), and the two modules of this
project that need no Django: devices.keys and devices.protocol. Start it with
`python -m devices.agent --help`; docs/protocol.md is the contract it implements.
"""

__version__ = "0.1.0"
