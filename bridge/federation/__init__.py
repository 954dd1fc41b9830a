"""The federation: trust anchor, signed key directory, and the operator workflow behind it."""
