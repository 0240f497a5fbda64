//! File encryption at rest and its check: the age STREAM format, hashed on the way.

use super::*;

/// Encrypts `source` into `dest` (via a temporary file, synced, then renamed), with a
/// fresh key, hashing the plaintext. Blocking: run it on the blocking pool.
pub fn encrypt_file(source: &Path, dest: &Path) -> Result<Encrypted, std::io::Error> {
    use std::io::{Read, Write};
    let mut key = zeroize::Zeroizing::new([0u8; 16]);
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, key.as_mut_slice());
    let (mut enc, nonce) =
        StreamEncryptor::new(&key, &mut rand_core::OsRng).map_err(std::io::Error::other)?;
    let tmp = dest.with_extension("age.tmp");
    let mut input = std::fs::File::open(source)?;
    let mut out = std::io::BufWriter::with_capacity(IO_CHUNK, std::fs::File::create(&tmp)?);
    out.write_all(&nonce)?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; IO_CHUNK];
    let mut sealed = Vec::with_capacity(IO_CHUNK + 2 * ENCRYPTED_CHUNK_SIZE);
    let mut size = 0u64;
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let data = buf.get(..n).unwrap_or_default();
        size += n as u64;
        if size > MAX_FILE {
            drop(out);
            let _ = std::fs::remove_file(&tmp);
            return Err(std::io::Error::new(std::io::ErrorKind::FileTooLarge, "over 2 GiB"));
        }
        hash.update(data);
        sealed.clear();
        enc.push(data, &mut sealed).map_err(std::io::Error::other)?;
        out.write_all(&sealed)?;
    }
    sealed.clear();
    enc.finish(&mut sealed).map_err(std::io::Error::other)?;
    out.write_all(&sealed)?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    let blob_size = file.metadata()?.len();
    std::fs::rename(&tmp, dest)?;
    Ok(Encrypted { key, sha256: hex::encode(hash.finalize()), size, blob_size })
}

/// Decrypts the payload at `src`, writing the plaintext to `dest` if given, and returns
/// the plaintext's SHA-256 (hex). Blocking.
pub fn decrypt_to(
    src: &Path,
    key: &[u8; 16],
    dest: Option<&mut dyn std::io::Write>,
) -> Result<String, std::io::Error> {
    use std::io::Read;
    let mut input = std::fs::File::open(src)?;
    let mut dec = StreamDecryptor::new(key);
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; IO_CHUNK];
    let mut plain = zeroize::Zeroizing::new(Vec::with_capacity(IO_CHUNK + CHUNK_SIZE));
    let mut dest = dest;
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        plain.clear();
        dec.push(buf.get(..n).unwrap_or_default(), &mut plain).map_err(std::io::Error::other)?;
        hash.update(plain.as_slice());
        if let Some(d) = dest.as_mut() {
            d.write_all(&plain)?;
        }
    }
    plain.clear();
    dec.finish(&mut plain).map_err(std::io::Error::other)?;
    hash.update(plain.as_slice());
    if let Some(d) = dest.as_mut() {
        d.write_all(&plain)?;
    }
    Ok(hex::encode(hash.finalize()))
}

/// A file's plaintext on its way to a path a client named: a private temporary file in
/// the same directory (so the last step is one atomic rename), removed when dropped
/// unless [`PlainFile::persist`] moved it onto the path. Blocking.
#[derive(Debug)]
pub struct PlainFile {
    tmp: PathBuf,
    dest: PathBuf,
    file: std::fs::File,
    persisted: bool,
}

impl PlainFile {
    /// Creates the directory of `dest` if it is missing (0700), and there a temporary
    /// file of a random name, mode 0600, with `create_new`: nothing already at that name
    /// (a symlink either) is ever opened or followed.
    pub fn create(dest: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let dir = dest.parent().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path has no directory")
        })?;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let mut last = None;
        for _ in 0..8 {
            let mut r = [0u8; 8];
            rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut r);
            let tmp = dir.join(format!(".{}.letstalk-part", hex::encode(r)));
            match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp) {
                Ok(file) => {
                    return Ok(Self { tmp, dest: dest.to_owned(), file, persisted: false });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no free temporary name")))
    }

    /// Flushes the plaintext to the disk.
    pub fn sync(&self) -> std::io::Result<()> {
        self.file.sync_all()
    }

    /// Renames it onto its path (replacing what was there): call [`PlainFile::sync`]
    /// first, and only once the plaintext is known to be the right one.
    pub fn persist(mut self) -> std::io::Result<()> {
        std::fs::rename(&self.tmp, &self.dest)?;
        self.persisted = true;
        Ok(())
    }
}

impl std::io::Write for PlainFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Drop for PlainFile {
    fn drop(&mut self) {
        if !self.persisted {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Logs why a download's plaintext was not written on the way (it is written from the
/// stored copy then). Never the plaintext itself.
pub(super) fn plain_later(step: &str, e: &std::io::Error) {
    tracing::warn!(step, error = %e, "a download's plaintext: written from the stored copy instead");
}

/// What [`check_stream`] found: the plaintext's SHA-256 (hex), and the plaintext itself
/// in its synced temporary file when one was given and every write to it succeeded.
pub(super) struct Checked {
    pub sha256: String,
    pub plain: Option<PlainFile>,
}

/// Decrypts and hashes a download as it arrives: the first `held` bytes from `part` (an
/// earlier attempt's), then the chunks from `chunks` until it closes; the plaintext also
/// goes to `plain` when given, which a failed write drops (removing its file: the caller
/// then writes the plaintext from the stored copy). An error when the bytes do not
/// decrypt (`plain` is removed then too).
pub(super) fn check_stream(
    part: &Path,
    held: u64,
    key: &[u8; 16],
    plain: Option<PlainFile>,
    mut chunks: tokio::sync::mpsc::Receiver<Vec<u8>>,
) -> Result<Checked, std::io::Error> {
    use std::io::{Read, Write};
    let mut dec = StreamDecryptor::new(key);
    let mut hash = Sha256::new();
    let mut out = plain;
    let mut clear = zeroize::Zeroizing::new(Vec::with_capacity(IO_CHUNK + CHUNK_SIZE));
    let mut take = |clear: &[u8]| {
        hash.update(clear);
        let failed = out.as_mut().and_then(|f| f.write_all(clear).err());
        if let Some(e) = failed {
            plain_later("writing", &e);
            out = None;
        }
    };
    let mut kept = std::fs::File::open(part)?.take(held);
    let mut buf = vec![0u8; IO_CHUNK];
    loop {
        let n = kept.read(&mut buf)?;
        if n == 0 {
            break;
        }
        clear.clear();
        dec.push(buf.get(..n).unwrap_or_default(), &mut clear).map_err(std::io::Error::other)?;
        take(clear.as_slice());
    }
    while let Some(chunk) = chunks.blocking_recv() {
        clear.clear();
        dec.push(&chunk, &mut clear).map_err(std::io::Error::other)?;
        take(clear.as_slice());
    }
    clear.clear();
    dec.finish(&mut clear).map_err(std::io::Error::other)?;
    take(clear.as_slice());
    let mut plain = out;
    if let Some(Err(e)) = plain.as_ref().map(PlainFile::sync) {
        plain_later("syncing", &e);
        plain = None;
    }
    Ok(Checked { sha256: hex::encode(hash.finalize()), plain })
}

// ---------------------------------------------------------------------------------------
// What the methods call

/// The outcome of a transfer (an upload, or a download without its plaintext).
pub type Outcome = Result<(), TransferError>;

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of `len` bytes, encrypted: (plaintext, its SHA-256, key, payload).
    fn payload(dir: &Path, len: usize) -> (Vec<u8>, String, [u8; 16], Vec<u8>) {
        let data: Vec<u8> = (0..len as u32).map(|i| (i.wrapping_mul(7) % 253) as u8).collect();
        let src = dir.join("in.bin");
        std::fs::write(&src, &data).unwrap();
        let enc = encrypt_file(&src, &dir.join("x.age")).unwrap();
        let bytes = std::fs::read(dir.join("x.age")).unwrap();
        (data, enc.sha256, *enc.key, bytes)
    }

    /// Runs the checker on `held` (what an earlier attempt kept in the part file) and
    /// then `rest` in chunks of `step` bytes, writing the plaintext beside `dest`.
    fn check(
        dir: &Path,
        key: &[u8; 16],
        held: &[u8],
        rest: &[u8],
        step: usize,
        dest: &Path,
    ) -> Result<Checked, std::io::Error> {
        let part = dir.join("x.age.part");
        std::fs::write(&part, held).unwrap();
        let chunks: Vec<Vec<u8>> = rest.chunks(step).map(<[u8]>::to_vec).collect();
        let (tx, rx) = tokio::sync::mpsc::channel(chunks.len().max(1));
        for c in chunks {
            tx.try_send(c).unwrap();
        }
        drop(tx);
        check_stream(&part, held.len() as u64, key, Some(PlainFile::create(dest).unwrap()), rx)
    }

    /// The temporary files of the plaintext left in `dir`.
    fn temps(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".letstalk-part"))
            .collect()
    }

    #[test]
    fn the_checker_writes_the_plaintext_it_checks() {
        let dir = tempfile::tempdir().unwrap();
        let (data, sha, key, bytes) = payload(dir.path(), 300_000);
        let out = dir.path().join("out");
        let dest = out.join("received.bin");
        let checked = check(dir.path(), &key, &[], &bytes, 10_000, &dest).unwrap();
        assert_eq!(checked.sha256, sha);
        // Nothing at dest until the caller, having compared the hash, persists it; the
        // temporary file beside it is private.
        assert!(!dest.exists());
        let names = temps(&out);
        assert_eq!(names.len(), 1, "{names:?}");
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(out.join(&names[0])).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        checked.plain.unwrap().persist().unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), data);
        assert_eq!(temps(&out), Vec::<String>::new());
    }

    #[test]
    fn a_resumed_download_writes_the_held_bytes_too() {
        let dir = tempfile::tempdir().unwrap();
        let (data, sha, key, bytes) = payload(dir.path(), 2 * IO_CHUNK + 12_345);
        let dest = dir.path().join("received.bin");
        // Held bytes that end inside a chunk, more than one read of the part file.
        let (held, rest) = bytes.split_at(IO_CHUNK + 70_001);
        let checked = check(dir.path(), &key, held, rest, 65_536, &dest).unwrap();
        assert_eq!(checked.sha256, sha);
        checked.plain.unwrap().persist().unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), data);
        // All held, nothing more to come.
        let dest2 = dir.path().join("again.bin");
        let checked = check(dir.path(), &key, &bytes, &[], 1, &dest2).unwrap();
        assert_eq!(checked.sha256, sha);
        checked.plain.unwrap().persist().unwrap();
        assert_eq!(std::fs::read(&dest2).unwrap(), data);
    }

    #[test]
    fn a_bad_stream_leaves_nothing_at_dest() {
        let dir = tempfile::tempdir().unwrap();
        let (_, sha, key, bytes) = payload(dir.path(), 300_000);
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let dest = out.join("received.bin");
        let mut flipped = bytes.clone();
        flipped[200_000] ^= 1;
        let truncated = &bytes[..bytes.len() - 100];
        let mut wrong_key = key;
        wrong_key[0] ^= 1;
        for (what, key, stream) in [
            ("a flipped byte", &key, &flipped[..]),
            ("truncated", &key, truncated),
            (
                "cut at a chunk boundary",
                &key,
                &bytes[..bytes.len() - 300_000 % CHUNK_SIZE - (ENCRYPTED_CHUNK_SIZE - CHUNK_SIZE)],
            ),
            ("the wrong key", &wrong_key, &bytes[..]),
        ] {
            assert!(check(dir.path(), key, &[], stream, 8_192, &dest).is_err(), "{what}");
            assert!(!dest.exists(), "{what}");
            assert_eq!(temps(&out), Vec::<String>::new(), "{what}");
            // The same when the bad bytes were held from an earlier attempt.
            let (held, rest) = stream.split_at(250_000);
            assert!(check(dir.path(), key, held, rest, 8_192, &dest).is_err(), "{what}");
            assert!(!dest.exists(), "{what}");
            assert_eq!(temps(&out), Vec::<String>::new(), "{what}");
        }
        // Decrypts, but is not the file the message promised: the caller drops it.
        let checked = check(dir.path(), &key, &[], &bytes, 8_192, &dest).unwrap();
        assert_eq!(checked.sha256, sha);
        drop(checked);
        assert!(!dest.exists());
        assert_eq!(temps(&out), Vec::<String>::new());
    }

    #[test]
    fn the_temporary_file_never_opens_what_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("sub").join("received.bin");
        let f = PlainFile::create(&dest).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("sub")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }
        // The name is random: a second one beside it is another file.
        let g = PlainFile::create(&dest).unwrap();
        assert_ne!(f.tmp, g.tmp);
        drop((f, g));
        assert_eq!(temps(&dir.path().join("sub")), Vec::<String>::new());
    }
}
