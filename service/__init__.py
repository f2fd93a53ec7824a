"""Neto Token Broker: keeps Neto merchants' credentials and brokers access to them."""
