//! Exit statuses: the same four for every command, so that a script can tell "the thing I
//! checked is bad" from "I called it wrong" from "a file could not be read".

use std::process::ExitCode;

/// A command's exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: done; the check passed.
    Ok,
    /// 1: what was checked is not good: an invalid configuration, an upstream that cannot be
    /// loaded, a broken audit chain, a token that refused (wrong SO PIN), PINs that differ.
    Failed,
    /// 2: usage: an unknown command or option, a missing or malformed argument, no audit key.
    /// clap exits with 2 for the errors it finds, so this value is fixed.
    Usage,
    /// 3: input or output: a file named on the command line (or the configuration file) cannot
    /// be read or written, a file that must be new exists, standard input or output failed.
    Io,
}

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Failed => 1,
            Exit::Usage => 2,
            Exit::Io => 3,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e.code())
    }
}

/// The exit statuses as `--help` and the man page show them.
pub const HELP: &str = "\
Exit status (every command):
  0  success: the command did its work, the check passed
  1  check failed: invalid configuration, upstream not usable, broken audit chain,
     the token refused (for example a wrong SO PIN), the two PINs differ
  2  usage error: unknown command or option, missing or malformed argument
  3  input/output error: a named file cannot be read or written (missing, no
     permission, must be new but exists), standard input or output failed";
