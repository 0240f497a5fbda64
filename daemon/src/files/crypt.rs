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

/// Decrypts and hashes a download as it arrives: the first `held` bytes from `part` (an
/// earlier attempt's), then the chunks from `chunks` until it closes. Returns the
/// plaintext's SHA-256 (hex); an error when the bytes do not decrypt.
pub(super) fn check_stream(
    part: &Path,
    held: u64,
    key: &[u8; 16],
    mut chunks: tokio::sync::mpsc::Receiver<Vec<u8>>,
) -> Result<String, std::io::Error> {
    use std::io::Read;
    let mut dec = StreamDecryptor::new(key);
    let mut hash = Sha256::new();
    let mut plain = zeroize::Zeroizing::new(Vec::with_capacity(IO_CHUNK + CHUNK_SIZE));
    let mut push = |data: &[u8], dec: &mut StreamDecryptor| -> Result<(), std::io::Error> {
        plain.clear();
        dec.push(data, &mut plain).map_err(std::io::Error::other)?;
        hash.update(plain.as_slice());
        Ok(())
    };
    let mut kept = std::fs::File::open(part)?.take(held);
    let mut buf = vec![0u8; IO_CHUNK];
    loop {
        let n = kept.read(&mut buf)?;
        if n == 0 {
            break;
        }
        push(buf.get(..n).unwrap_or_default(), &mut dec)?;
    }
    while let Some(chunk) = chunks.blocking_recv() {
        push(&chunk, &mut dec)?;
    }
    let mut last = zeroize::Zeroizing::new(Vec::new());
    dec.finish(&mut last).map_err(std::io::Error::other)?;
    hash.update(last.as_slice());
    Ok(hex::encode(hash.finalize()))
}

// ---------------------------------------------------------------------------------------
// What the methods call

/// The outcome of [`download_now`].
pub type Outcome = Result<(), TransferError>;
