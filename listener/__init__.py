"""hangup-listener: classifies every FreeSWITCH hangup into a call status, bye reason and SIP code."""

__version__ = "0.2.0"
