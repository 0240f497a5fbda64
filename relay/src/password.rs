//! Argon2id password hashing (m = 19 MiB, t = 2, p = 1, the OWASP minimum), run on the
//! blocking pool and limited to one hash per core so a burst of logins cannot starve the
//! relay.

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

/// Hashes and verifies passwords.
#[derive(Debug)]
pub(crate) struct Hasher {
    permits: Semaphore,
    /// A hash of a random password: verifying against it for unknown users makes a login
    /// take the same time whether or not the account exists.
    dummy: OnceLock<String>,
}

fn argon() -> Result<Argon2<'static>, String> {
    let params = Params::new(19 * 1024, 2, 1, None).map_err(|e| e.to_string())?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

fn hash_blocking(password: &str) -> Result<String, String> {
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| e.to_string())?;
    Ok(argon()?.hash_password(password.as_bytes(), &salt).map_err(|e| e.to_string())?.to_string())
}

fn verify_blocking(password: &str, phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else { return false };
    // Parameters come from the stored hash, so old hashes keep verifying after a change.
    Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok()
}

impl Hasher {
    pub(crate) fn new() -> Self {
        let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(2);
        Self { permits: Semaphore::new(cores), dummy: OnceLock::new() }
    }

    pub(crate) async fn hash(&self, password: String) -> Result<String, String> {
        let _permit = self.permits.acquire().await.map_err(|e| e.to_string())?;
        tokio::task::spawn_blocking(move || hash_blocking(&password))
            .await
            .map_err(|e| e.to_string())?
    }

    /// Verifies `password` against `phc`, or against a dummy hash when `phc` is `None`
    /// (and then always fails).
    pub(crate) async fn verify(&self, password: String, phc: Option<String>) -> bool {
        let Ok(_permit) = self.permits.acquire().await else { return false };
        let real = phc.is_some();
        let phc = match phc {
            Some(p) => p,
            None => match self.dummy.get() {
                Some(d) => d.clone(),
                None => {
                    let d =
                        tokio::task::spawn_blocking(|| hash_blocking("letstalk-dummy-password"))
                            .await
                            .ok()
                            .and_then(Result::ok)
                            .unwrap_or_default();
                    let _ = self.dummy.set(d.clone());
                    d
                }
            },
        };
        let ok = tokio::task::spawn_blocking(move || verify_blocking(&password, &phc))
            .await
            .unwrap_or(false);
        ok && real
    }
}
