"""Configuration: every settings value, frozen, in one place (``settings``), and the loader that
builds them from TOML, ``HANGUP_LISTENER_*`` variables and credentials (``loader``)."""
