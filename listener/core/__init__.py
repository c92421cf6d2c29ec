"""The pure core: ESL framing, the event, classification, the document, retry and circuit decisions,
signing and number masking.

Nothing here does I/O beyond reading the package's own data files, and nothing imports gevent,
greenswitch, structlog, an HTTP client, prometheus_client, socket, ssl, select or sqlite3
(``tests/test_core_purity.py`` keeps it so). Clocks and randomness are passed in.
"""
