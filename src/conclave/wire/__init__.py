"""What the client and the server share: the backend contract and the native protocol's codec.

``wire.contract`` is the contract between the client-facing protocol adapters (``api``) and the
node that serves them (``server``), and the result types a client sees; ``wire.native`` is the
native protocol's frame and value codec. Neither holds I/O or business rules, so both ends import
them without importing each other.
"""
