"""The worker's sends: each outbox entry rendered, sent once and recorded."""
