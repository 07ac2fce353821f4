//! `p11gate audit summary`: per app, key and function counts from JSON-lines or syslog text.
