"""Everything that speaks Neto: the action catalogue, OAuth, and the store API client."""
