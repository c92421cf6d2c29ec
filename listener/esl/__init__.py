"""The source: FreeSWITCH's Event Socket, hardened (``connection``) and kept connected (``source``)."""
