//! Argon2id password hashing (m = 19 MiB, t = 2, p = 1, the OWASP minimum) on a few
//! dedicated threads, one per core.
//!
//! Why dedicated threads and not tokio's blocking pool: each hash allocates 19 MiB, and
//! glibc keeps freed memory in the arena of the thread that freed it. Spread over the
//! blocking pool's many threads, that retained ~6 MiB per connection in the handshake
//! benchmark (1.1 GiB for 200 registrations); on a fixed set of threads it stays bounded
//! at about 19 MiB per thread. The fixed set also caps how much CPU a burst of logins
//! can take from the relay.

use std::sync::{Arc, Mutex, OnceLock, mpsc};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// Hashes and verifies passwords.
#[derive(Debug)]
pub(crate) struct Hasher {
    jobs: Mutex<mpsc::Sender<Job>>,
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
    /// Starts one hashing thread per core; they end when the `Hasher` is dropped.
    pub(crate) fn new() -> Self {
        let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(2);
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..cores {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new().name(format!("argon2-{i}")).spawn(move || {
                loop {
                    // The lock is held only while waiting for the next job, not during it.
                    let job = match rx.lock() {
                        Ok(r) => r.recv(),
                        Err(_) => return,
                    };
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                }
            });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "could not start a hashing thread");
            }
        }
        Self { jobs: Mutex::new(tx), dummy: OnceLock::new() }
    }

    /// Runs `f` on a hashing thread.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.jobs
            .lock()
            .map_err(|_| "hasher lock".to_owned())?
            .send(job)
            .map_err(|_| "hasher stopped".to_owned())?;
        rx.await.map_err(|_| "hashing thread failed".to_owned())
    }

    pub(crate) async fn hash(&self, password: String) -> Result<String, String> {
        self.run(move || hash_blocking(&password)).await?
    }

    /// Verifies `password` against `phc`, or against a dummy hash when `phc` is `None`
    /// (and then always fails).
    pub(crate) async fn verify(&self, password: String, phc: Option<String>) -> bool {
        let real = phc.is_some();
        let phc = match phc {
            Some(p) => p,
            None => match self.dummy.get() {
                Some(d) => d.clone(),
                None => {
                    let d = self
                        .run(|| hash_blocking("letstalk-dummy-password"))
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .unwrap_or_default();
                    let _ = self.dummy.set(d.clone());
                    d
                }
            },
        };
        let ok = self.run(move || verify_blocking(&password, &phc)).await.unwrap_or(false);
        ok && real
    }
}
