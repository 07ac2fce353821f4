//! `p11gate doctor`: does a Vault `seal "pkcs11"` stanza work through p11gate? The checks live
//! in the library (`p11gate::doctor`); this file is their command line.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use crate::exit::Exit;

pub const ABOUT: &str = "\
Check that Vault's seal \"pkcs11\" stanza works through p11gate, as Vault would use it: the
library at `lib` loads (C_GetFunctionList, C_Initialize with CKF_OS_LOCKING_OK), the slot or
token_label resolves for the app, the PIN logs in, the keys exist with the right class and type
(or generate_key is set), Vault's mechanism is offered (not hidden by p11gate policy, supported by
the backend), and a real round trip with it works (AES, RSA-OAEP with rsa_oaep_hash, HMAC).
VAULT_HSM_* environment variables override the stanza, as in Vault. Nothing is created on the
token; a failed login counts against the token's PIN retries like any other.

One line per check: PASS, WARN, FAIL or SKIP (an earlier failure left nothing to check), what
was found, and for a failure a hint how to fix it. The PIN is never printed.

--json prints one JSON object: {\"checks\": [{\"check\", \"verdict\", \"detail\", \"hint\"}, ...]}.";

pub const EXAMPLES: &str = "\
Examples:
  p11gate doctor --vault-config /etc/vault.d/vault.hcl
  p11gate doctor --vault-config /etc/vault.d/vault.hcl --config /etc/p11gate/p11gate.toml --app vault-1
  VAULT_HSM_PIN=$(cat /etc/vault.d/hsm.pin) p11gate doctor --vault-config vault.hcl --json";

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Vault's configuration file (HCL or JSON) with the seal "pkcs11" stanza
    #[arg(long, value_name = "VAULT.hcl")]
    pub vault_config: PathBuf,
    /// p11gate's configuration, as P11GATE_CONFIG in Vault's service environment
    #[arg(long, value_name = "P11GATE.toml")]
    pub config: Option<PathBuf>,
    /// The app Vault is, as P11GATE_APP in Vault's service environment
    #[arg(long, value_name = "NAME")]
    pub app: Option<String>,
    /// Print one JSON object instead of verdict lines
    #[arg(long)]
    pub json: bool,
}

/// Runs the checks: `Ok` when none failed (warnings allowed), `Failed` when one did.
pub fn run(a: &DoctorArgs, out: &mut dyn Write) -> Exit {
    let mut args = vec![
        "--vault-config".to_string(),
        a.vault_config.display().to_string(),
    ];
    if let Some(c) = &a.config {
        args.extend(["--config".to_string(), c.display().to_string()]);
    }
    if let Some(app) = &a.app {
        args.extend(["--app".to_string(), app.clone()]);
    }
    if a.json {
        args.push("--json".to_string());
    }
    match p11gate::doctor::run(&args, out) {
        0 => Exit::Ok,
        1 => Exit::Failed,
        _ => Exit::Usage,
    }
}
