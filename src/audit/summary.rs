//! `p11gate audit summary`: per app, key and function counts from JSON-lines or syslog text.

pub const USAGE: &str = "p11gate audit summary [FILE|-]";

/// Placeholder until the summary lands.
pub fn run(_args: &[String], _out: &mut dyn std::io::Write) -> u8 {
    2
}
