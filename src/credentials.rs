//! PIN mapping: a slot may hold its upstream's credential (the PIN, partition password or API
//! key the vendor module expects), so that applications log in with a PIN of their own and
//! never learn the upstream's secret. The application's PIN is checked against an argon2 hash
//! from the configuration; only on a match does the upstream see `C_Login`, with the stored
//! credential.
//!
//! Secrets live in zeroizing buffers, are read at `C_Initialize` (so a rotated credential takes
//! effect at the next initialisation) and are never formatted: `Debug` shows only a placeholder.
#![forbid(unsafe_code)]

use std::fmt;
use std::path::Path;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use password_hash::rand_core::OsRng;
use zeroize::Zeroizing;

/// Where a slot's upstream credential comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// A file holding it (one trailing newline is not part of it).
    File(std::path::PathBuf),
    /// An environment variable holding it.
    Env(String),
}

/// A slot's credential, ready for `C_Login`.
pub struct Credential {
    secret: Zeroizing<Vec<u8>>,
    pin_hash: String,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credential(<secret>)")
    }
}

impl Credential {
    /// Reads the credential. The error text names the source, never the content.
    pub fn load(source: &CredentialSource, pin_hash: &str) -> Result<Credential, String> {
        let mut secret = match source {
            CredentialSource::File(path) => Zeroizing::new(
                std::fs::read(path)
                    .map_err(|e| format!("credential file {}: {e}", path.display()))?,
            ),
            CredentialSource::Env(name) => Zeroizing::new(
                std::env::var_os(name)
                    .ok_or_else(|| format!("credential_env {name} is not set"))?
                    .into_encoded_bytes(),
            ),
        };
        if secret.ends_with(b"\n") {
            secret.pop();
            if secret.ends_with(b"\r") {
                secret.pop();
            }
        }
        Ok(Credential {
            secret,
            pin_hash: pin_hash.to_string(),
        })
    }

    /// Whether the application's PIN matches the configured hash.
    pub fn verify(&self, pin: &[u8]) -> bool {
        PasswordHash::new(&self.pin_hash)
            .is_ok_and(|h| Argon2::default().verify_password(pin, &h).is_ok())
    }

    /// The upstream's credential, for `C_Login`.
    pub fn secret(&self) -> &[u8] {
        &self.secret
    }
}

/// Checks that `text` is an argon2 hash in PHC form (`$argon2id$v=19$m=...`).
pub fn check_pin_hash(text: &str) -> Result<(), String> {
    let h = PasswordHash::new(text).map_err(|e| format!("pin_hash is not a PHC string ({e})"))?;
    if !matches!(h.algorithm.as_str(), "argon2id" | "argon2i" | "argon2d") {
        return Err(format!("pin_hash uses {}, not argon2", h.algorithm));
    }
    Ok(())
}

/// Hashes a PIN for the configuration (`p11gate hash-pin`): argon2id with a random salt and the
/// argon2 crate's default cost (19 MiB, 2 passes), as OWASP recommends.
pub fn hash_pin(pin: &[u8]) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(pin, &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// A credential file must not be accessible to other users.
pub fn check_file_permissions(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let meta =
        std::fs::metadata(path).map_err(|e| format!("credential file {}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o007 != 0 {
        return Err(format!(
            "credential file {} is accessible by others (mode {mode:04o}); chmod o-rwx it",
            path.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_then_verify() {
        let hash = hash_pin(b"app-pin-1").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        check_pin_hash(&hash).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cred");
        std::fs::write(&file, b"upstream-secret\n").unwrap();
        let c = Credential::load(&CredentialSource::File(file), &hash).unwrap();
        assert!(c.verify(b"app-pin-1"));
        assert!(!c.verify(b"app-pin-2"));
        assert_eq!(c.secret(), b"upstream-secret");
        assert_eq!(format!("{c:?}"), "Credential(<secret>)");
    }

    #[test]
    fn bad_hashes_and_open_files_are_refused() {
        assert!(check_pin_hash("plain").is_err());
        let scrypt = "$scrypt$ln=15,r=8,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA";
        assert_eq!(
            check_pin_hash(scrypt).unwrap_err(),
            "pin_hash uses scrypt, not argon2"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cred");
        std::fs::write(&file, b"x").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = check_file_permissions(&file).unwrap_err();
        assert!(
            e.ends_with("is accessible by others (mode 0644); chmod o-rwx it"),
            "{e}"
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        check_file_permissions(&file).unwrap();
    }
}
