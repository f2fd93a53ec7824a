"""HTTP surfaces, one router module each."""
