"""Install lifecycle events: the outbox written with each change, the feed that reads it
in commit order, and webhook subscriptions with their delivery worker."""
