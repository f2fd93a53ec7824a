"""Encryption keys in use across every table with sealed columns: which keys the stored
data needs, and rotation to the primary. Knows no table: each domain describes its own
sealed columns (`SealedTable`) and the CLI passes them all."""
