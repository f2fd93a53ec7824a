"""Security primitives: sealing secrets, caller tokens, store domains and egress rules."""
