//! The audit trail: one typed record per security-relevant call, written by a writer thread
//! to syslog (RFC 5424) and/or a JSON-lines file with an HMAC chain. See README "Audit trail".

pub mod summary;
