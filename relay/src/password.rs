//! Argon2id password hashing (m = 19 MiB, t = 2, p = 1, the OWASP minimum) on a few
//! dedicated threads, one per core.
//!
//! Why dedicated threads and not tokio's blocking pool: each hash allocates 19 MiB, and
//! glibc keeps freed memory in the arena of the thread that freed it. Spread over the
//! blocking pool's many threads, that retained ~6 MiB per connection in the handshake
//! benchmark (1.1 GiB for 200 registrations); on a fixed set of threads it stays bounded
//! at about 19 MiB per thread. The fixed set also caps how much CPU a burst of logins
//! can take from the relay. Jobs wait in a bounded queue ([`QUEUE`]); when it is full
//! a request is answered `rate_limited` at once instead of piling up memory and latency.

use std::cell::RefCell;
use std::sync::{Arc, Mutex, OnceLock, mpsc};

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{ARGON2ID_IDENT, Algorithm, Argon2, Block, Params, Version};
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// Jobs waiting for a hashing thread, at most. With ~50 ms per hash on one core, a full
/// queue is about a second of work: a client waits at most that, or is told to retry.
pub(crate) const QUEUE: usize = 32;

/// Why a hash or verification did not run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HashError {
    /// The queue is full: retry later.
    #[error("hashing queue full")]
    Busy,
    /// The hashing thread failed.
    #[error("{0}")]
    Failed(String),
}

/// Hashes and verifies passwords.
#[derive(Debug)]
pub(crate) struct Hasher {
    jobs: Mutex<mpsc::SyncSender<Job>>,
    /// A hash of a random password: verifying against it for unknown users makes a login
    /// take the same time whether or not the account exists.
    dummy: OnceLock<String>,
}

thread_local! {
    /// Each hashing thread's Argon2 memory, allocated once and reused: allocating 19 MiB
    /// per hash left glibc arenas holding hundreds of MiB after a burst of registrations.
    static MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

fn params() -> Result<Params, String> {
    Params::new(19 * 1024, 2, 1, Some(32)).map_err(|e| e.to_string())
}

/// Argon2 into `out` with this thread's reusable memory, wiped afterwards.
fn compute(
    algorithm: Algorithm,
    version: Version,
    params: Params,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> Result<(), String> {
    let need = params.block_count();
    let argon = Argon2::new(algorithm, version, params);
    MEMORY.with(|m| {
        let mut m = m.borrow_mut();
        if m.len() < need {
            m.resize(need, Block::default());
        }
        let result = argon.hash_password_into_with_memory(password, salt, out, &mut m[..need]);
        // The blocks are derived from the password: do not leave them until the next hash.
        m.iter_mut().for_each(|b| *b = Block::default());
        result.map_err(|e| e.to_string())
    })
}

fn hash_blocking(password: &str) -> Result<String, String> {
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| e.to_string())?;
    let params = params()?;
    let params_string = ParamsString::try_from(&params).map_err(|e| e.to_string())?;
    let mut out = [0u8; 32];
    compute(
        Algorithm::Argon2id,
        Version::V0x13,
        params,
        password.as_bytes(),
        &salt_bytes,
        &mut out,
    )?;
    let phc = PasswordHash {
        algorithm: ARGON2ID_IDENT,
        version: Some(Version::V0x13.into()),
        params: params_string,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(|e| e.to_string())?),
    };
    Ok(phc.to_string())
}

fn verify_blocking(password: &str, phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else { return false };
    // Parameters come from the stored hash, so old hashes keep verifying after a change.
    let (Ok(algorithm), Ok(params)) =
        (Algorithm::try_from(parsed.algorithm), Params::try_from(&parsed))
    else {
        return false;
    };
    let version = parsed.version.map(Version::try_from).unwrap_or(Ok(Version::V0x13));
    let (Ok(version), Some(salt), Some(expected)) = (version, parsed.salt, parsed.hash) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else { return false };
    let mut out = vec![0u8; expected.len()];
    if compute(algorithm, version, params, password.as_bytes(), salt, &mut out).is_err() {
        return false;
    }
    // `Output`'s equality is constant time.
    Output::new(&out).is_ok_and(|o| o == expected)
}

impl Hasher {
    /// Starts one hashing thread per core; they end when the `Hasher` is dropped.
    pub(crate) fn new() -> Self {
        let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(2);
        let (tx, rx) = mpsc::sync_channel::<Job>(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..cores {
            let rx = rx.clone();
            let spawned =
                std::thread::Builder::new().name(format!("argon2-{i}")).spawn(move || {
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
    ) -> Result<T, HashError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        let sent =
            self.jobs.lock().map_err(|_| HashError::Failed("hasher lock".into()))?.try_send(job);
        match sent {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(_)) => return Err(HashError::Busy),
            Err(mpsc::TrySendError::Disconnected(_)) => {
                return Err(HashError::Failed("hasher stopped".into()));
            }
        }
        rx.await.map_err(|_| HashError::Failed("hashing thread failed".into()))
    }

    pub(crate) async fn hash(&self, password: String) -> Result<String, HashError> {
        self.run(move || hash_blocking(&password)).await?.map_err(HashError::Failed)
    }

    /// Verifies `password` against `phc`, or against a dummy hash when `phc` is `None`
    /// (and then always fails). [`HashError::Busy`] when the queue is full.
    pub(crate) async fn verify(
        &self,
        password: String,
        phc: Option<String>,
    ) -> Result<bool, HashError> {
        let real = phc.is_some();
        let phc = match phc {
            Some(p) => p,
            None => match self.dummy.get() {
                Some(d) => d.clone(),
                None => {
                    let d = self
                        .run(|| hash_blocking("letstalk-dummy-password"))
                        .await?
                        .map_err(HashError::Failed)?;
                    let _ = self.dummy.set(d.clone());
                    d
                }
            },
        };
        let ok = self.run(move || verify_blocking(&password, &phc)).await?;
        Ok(ok && real)
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    #[tokio::test]
    async fn a_full_queue_answers_busy_at_once_and_recovers() {
        let h = Hasher::new();
        let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(2);
        let (release, wait) = mpsc::channel::<()>();
        let wait = Arc::new(Mutex::new(wait));
        // First every thread takes a job that holds it until released, and says so: until
        // then a thread could still take a queued job and make room, and the queue's
        // refusal below would be a race (seen failing on a loaded machine).
        let (started, running) = mpsc::channel::<()>();
        for _ in 0..cores {
            let (wait, started) = (wait.clone(), started.clone());
            let job = h.run(move || {
                let _ = started.send(());
                let _ = wait.lock().map(|w| w.recv());
            });
            assert!(job.now_or_never().is_none(), "a thread's job was queued");
        }
        for _ in 0..cores {
            running.recv_timeout(std::time::Duration::from_secs(10)).expect("every thread busy");
        }
        // Then the queue fills.
        let mut accepted = cores;
        let busy = loop {
            let wait = wait.clone();
            let job = h.run(move || {
                let _ = wait.lock().map(|w| w.recv());
            });
            // One poll submits the job; pending means it was queued.
            match job.now_or_never() {
                None => accepted += 1,
                Some(Err(HashError::Busy)) => break true,
                Some(_) => {}
            }
            if accepted > cores + QUEUE + 1 {
                break false;
            }
        };
        assert!(busy, "the queue never refused a job");
        assert!(accepted <= cores + QUEUE, "{accepted} jobs accepted");
        assert!(matches!(h.hash("password1".into()).now_or_never(), Some(Err(HashError::Busy))));
        for _ in 0..accepted {
            let _ = release.send(());
        }
        drop(release);
        // The released jobs drain from the queue; then hashing works again.
        let mut again = h.hash("password1".into()).await;
        for _ in 0..1000 {
            if !matches!(again, Err(HashError::Busy)) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            again = h.hash("password1".into()).await;
        }
        let phc = again.expect("hashing works again");
        assert!(h.verify("password1".into(), Some(phc)).await.unwrap());
    }
}
