"""The CDR source: mod_json_cdr's files, read for the legs the Event Socket missed
(``source``, ``inotify``)."""
