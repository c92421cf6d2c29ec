"""The source: FreeSWITCH's Event Socket, hardened (``connection``) and kept connected (``source``);
beside it, recovery of what it missed from mod_json_cdr's files (``cdr``, ``inotify``)."""
