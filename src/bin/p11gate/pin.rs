//! `p11gate hash-pin`, and reading PINs: from the terminal without echo (asked twice), else as
//! lines of standard input, so that scripts can pipe them in.

use std::io::{BufRead, IsTerminal, Write};

use clap::Args;
use zeroize::Zeroizing;

use p11gate::credentials;
use p11gate::ffi::terminal::read_hidden_line;

use crate::exit::Exit;

pub const HASH_PIN_ABOUT: &str = "\
Read a PIN and print its argon2id hash, for pin_hash in a [[slot]] whose upstream credential
p11gate holds (credential_file or credential_env): the application then logs in with this PIN,
and p11gate logs the HSM in with the stored credential.

On a terminal the PIN is asked twice without echo; otherwise the first line of standard input
is the PIN. The PIN is never printed, and the hash is different each time (random salt).";

pub const HASH_PIN_EXAMPLES: &str = "\
Examples:
  p11gate hash-pin
  printf '%s\\n' \"$APP_PIN\" | p11gate hash-pin";

#[derive(Debug, Args)]
pub struct HashPinArgs {}

/// Why a PIN could not be had: the exit status tells a read failure (3) from a refusal (1).
pub struct PinError {
    pub exit: Exit,
    pub message: String,
}

pub fn hash_pin(_args: &HashPinArgs, out: &mut dyn Write) -> Exit {
    let pin = match read_pins(&["PIN"]) {
        Ok(mut pins) => pins.remove(0),
        Err(e) => {
            eprintln!("hash-pin: {}", e.message);
            return e.exit;
        }
    };
    if pin.is_empty() {
        eprintln!("hash-pin: the PIN is empty");
        return Exit::Failed;
    }
    match credentials::hash_pin(pin.as_bytes()) {
        Ok(hash) => match writeln!(out, "{hash}").and_then(|()| out.flush()) {
            Ok(()) => Exit::Ok,
            Err(e) => crate::output_failed("hash-pin", e),
        },
        Err(e) => {
            eprintln!("hash-pin: {e}");
            Exit::Failed
        }
    }
}

/// One PIN per name in `who`: each asked twice without echo on a terminal ("SO PIN: ",
/// "SO PIN again: "), else one line of standard input each, in order.
pub fn read_pins(who: &[&str]) -> Result<Vec<Zeroizing<String>>, PinError> {
    let io_error = |e: std::io::Error| PinError {
        exit: Exit::Io,
        message: e.to_string(),
    };
    let mut pins = Vec::with_capacity(who.len());
    if std::io::stdin().is_terminal() {
        for name in who {
            let first = read_hidden_line(&format!("{name}: ")).map_err(io_error)?;
            let again = read_hidden_line(&format!("{name} again: ")).map_err(io_error)?;
            if *first != *again {
                return Err(PinError {
                    exit: Exit::Failed,
                    message: format!("the two {name}s differ"),
                });
            }
            pins.push(first);
        }
        return Ok(pins);
    }
    let mut stdin = std::io::stdin().lock();
    for _ in who {
        let mut line = Zeroizing::new(String::new());
        stdin.read_line(&mut line).map_err(io_error)?;
        let n = line.trim_end_matches(['\n', '\r']).len();
        line.truncate(n);
        pins.push(line);
    }
    Ok(pins)
}
