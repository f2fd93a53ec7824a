"""Neto's own notifications: received once per store URL, normalised, appended to the
event outbox and fanned out by the feed and the webhooks (issue 24)."""
