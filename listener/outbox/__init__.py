"""The buffer: the durable SQLite outbox (``store``), the daemon's one writer to it (``writer``), and
the operator's ``outbox`` commands (``commands``). It is the only hand-off between ingestion and
delivery."""
