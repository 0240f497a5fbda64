//! File encryption in the age STREAM format, incremental in both directions.
//!
//! Payload = 16-byte nonce || chunks. Payload key = HKDF-SHA256(ikm = 16-byte file key,
//! salt = nonce, info = "payload"). Each chunk is ChaCha20-Poly1305 over at most 64 KiB of
//! plaintext with nonce = 11-byte big-endian chunk counter || last-chunk flag (0x01 on the
//! final chunk). Only the first chunk may be an empty final chunk; a full-size chunk may be
//! final. The decryptor mirrors the reference Go implementation's choices so the public
//! vectors' released-plaintext hashes match: a full chunk is tried as non-final first, then
//! as final.
//!
//! Neither side ever holds more than one chunk and one byte, so multi-GB files stream in
//! constant memory, and both can [`resume`](StreamEncryptor::resume) at a chunk boundary.

use std::fmt;

use rand_core::{CryptoRng, RngCore};
use zeroize::{ZeroizeOnDrop, Zeroizing};

use crate::error::{Error, Result};
use crate::primitives::{NONCE_LEN, TAG_LEN, aead_open, aead_seal, hkdf_sha256};

/// Plaintext bytes per chunk.
pub const CHUNK_SIZE: usize = 64 * 1024;
/// Ciphertext bytes per full chunk.
pub const ENCRYPTED_CHUNK_SIZE: usize = CHUNK_SIZE + TAG_LEN;
/// Length of the payload nonce that precedes the chunks.
pub const PAYLOAD_NONCE_LEN: usize = 16;

/// The 11-byte counter allows 2^88 chunks; we stop at 2^64, far beyond any real file.
const MAX_CHUNKS: u64 = u64::MAX;

/// Payload key state shared by both directions. Zeroized on drop.
#[derive(ZeroizeOnDrop)]
struct PayloadKey([u8; 32]);

impl PayloadKey {
    fn derive(file_key: &[u8; 16], nonce: &[u8; PAYLOAD_NONCE_LEN]) -> Result<Self> {
        let mut key = Self([0; 32]);
        hkdf_sha256(Some(nonce), file_key, b"payload", &mut key.0)?;
        Ok(key)
    }
}

fn chunk_nonce(counter: u64, last: bool) -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    // Bytes 0..3 of the 11-byte counter stay zero: the counter never exceeds u64.
    nonce[3..11].copy_from_slice(&counter.to_be_bytes());
    nonce[11] = u8::from(last);
    nonce
}

/// Incremental STREAM encryptor: push plaintext, collect ciphertext, then finish.
pub struct StreamEncryptor {
    key: PayloadKey,
    counter: u64,
    buffer: Zeroizing<Vec<u8>>,
    done: bool,
}

impl StreamEncryptor {
    /// Starts a payload with a fresh random nonce. Returns the encryptor and the payload's
    /// first 16 bytes (the nonce), which must be written before the chunks.
    pub fn new(
        file_key: &[u8; 16],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<(Self, [u8; PAYLOAD_NONCE_LEN])> {
        let mut nonce = [0u8; PAYLOAD_NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        Ok((Self::resume(file_key, &nonce, 0)?, nonce))
    }

    /// Continues a payload at chunk `chunk_index` (all earlier chunks already written, none of
    /// them final).
    pub fn resume(
        file_key: &[u8; 16],
        nonce: &[u8; PAYLOAD_NONCE_LEN],
        chunk_index: u64,
    ) -> Result<Self> {
        Ok(Self {
            key: PayloadKey::derive(file_key, nonce)?,
            counter: chunk_index,
            buffer: Zeroizing::new(Vec::with_capacity(CHUNK_SIZE + 1)),
            done: false,
        })
    }

    /// Index of the next chunk to be written (for resuming).
    pub fn next_chunk_index(&self) -> u64 {
        self.counter
    }

    /// Adds plaintext; appends every chunk that is now known not to be final to `out`.
    pub fn push(&mut self, mut data: &[u8], out: &mut Vec<u8>) -> Result<()> {
        if self.done {
            return Err(Error::InvalidState);
        }
        while !data.is_empty() {
            // Fill up to one byte past a chunk: only then is the chunk known not to be final.
            let want = (CHUNK_SIZE + 1).saturating_sub(self.buffer.len());
            let (head, tail) = data.split_at(want.min(data.len()));
            self.buffer.extend_from_slice(head);
            data = tail;
            if self.buffer.len() > CHUNK_SIZE {
                let chunk = self.seal(false, CHUNK_SIZE)?;
                out.extend_from_slice(&chunk);
                self.buffer.drain(..CHUNK_SIZE);
            }
        }
        Ok(())
    }

    /// Writes the final chunk.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<()> {
        if self.done {
            return Err(Error::InvalidState);
        }
        let len = self.buffer.len();
        // With the push rule the buffer is empty here only if the whole payload is; an empty
        // final chunk after resuming would be invalid, so refuse to produce one.
        if len == 0 && self.counter != 0 {
            return Err(Error::EmptyLastChunk);
        }
        let chunk = self.seal(true, len)?;
        out.extend_from_slice(&chunk);
        self.done = true;
        Ok(())
    }

    fn seal(&mut self, last: bool, len: usize) -> Result<Vec<u8>> {
        if self.counter == MAX_CHUNKS {
            return Err(Error::CounterExhausted);
        }
        let plaintext = self.buffer.get(..len).ok_or(Error::InvalidState)?;
        let chunk = aead_seal(&self.key.0, &chunk_nonce(self.counter, last), &[], plaintext)?;
        self.counter += 1;
        Ok(chunk)
    }
}

/// Incremental STREAM decryptor: push payload bytes (nonce first), collect plaintext.
///
/// Plaintext is released chunk by chunk as each authenticates, so the caller must treat
/// everything as provisional until [`StreamDecryptor::finish`] returns `Ok`. After any error
/// the decryptor refuses further input.
pub struct StreamDecryptor {
    file_key: Zeroizing<[u8; 16]>,
    key: Option<PayloadKey>,
    counter: u64,
    buffer: Zeroizing<Vec<u8>>,
    state: DecryptState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DecryptState {
    Running,
    /// The final chunk was seen; any further byte is trailing data.
    Finished,
    Failed,
}

impl StreamDecryptor {
    /// Decrypts a payload from its start (the 16-byte nonce comes first in the input).
    pub fn new(file_key: &[u8; 16]) -> Self {
        Self {
            file_key: Zeroizing::new(*file_key),
            key: None,
            counter: 0,
            buffer: Zeroizing::new(Vec::with_capacity(ENCRYPTED_CHUNK_SIZE + 1)),
            state: DecryptState::Running,
        }
    }

    /// Continues at chunk `chunk_index`; the input starts at that chunk (no nonce).
    pub fn resume(
        file_key: &[u8; 16],
        nonce: &[u8; PAYLOAD_NONCE_LEN],
        chunk_index: u64,
    ) -> Result<Self> {
        let mut d = Self::new(file_key);
        d.key = Some(PayloadKey::derive(file_key, nonce)?);
        d.counter = chunk_index;
        Ok(d)
    }

    /// Index of the next chunk expected (for resuming).
    pub fn next_chunk_index(&self) -> u64 {
        self.counter
    }

    /// Adds payload bytes; appends authenticated plaintext to `out`.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let result = self.push_inner(data, out);
        if result.is_err() {
            self.state = DecryptState::Failed;
        }
        result
    }

    /// Ends the payload: decrypts the final chunk, or fails if the stream was truncated.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<()> {
        match self.state {
            DecryptState::Failed => return Err(Error::InvalidState),
            DecryptState::Finished => return Ok(()),
            DecryptState::Running => {}
        }
        if self.key.is_none() {
            // Fewer than 16 bytes: not even the nonce.
            return Err(Error::Truncated);
        }
        let len = self.buffer.len();
        if len == 0 {
            return Err(Error::Truncated);
        }
        if len == ENCRYPTED_CHUNK_SIZE {
            // A full chunk at the end: final if it authenticates as such; if it only
            // authenticates as non-final, its plaintext is released and the end is missing.
            let last = self.open_full_chunk(out)?;
            return if last { Ok(()) } else { Err(Error::Truncated) };
        }
        if self.counter != 0 && len == TAG_LEN {
            return Err(Error::EmptyLastChunk);
        }
        self.open_chunk(len, true, out)
    }

    fn push_inner(&mut self, mut data: &[u8], out: &mut Vec<u8>) -> Result<()> {
        match self.state {
            DecryptState::Running => {}
            DecryptState::Finished if data.is_empty() => return Ok(()),
            DecryptState::Finished => return Err(Error::TrailingData),
            DecryptState::Failed => return Err(Error::InvalidState),
        }
        if self.key.is_none() {
            let want = PAYLOAD_NONCE_LEN.saturating_sub(self.buffer.len());
            let (head, tail) = data.split_at(want.min(data.len()));
            self.buffer.extend_from_slice(head);
            data = tail;
            let Ok(nonce) = <[u8; PAYLOAD_NONCE_LEN]>::try_from(self.buffer.as_slice()) else {
                return Ok(());
            };
            self.key = Some(PayloadKey::derive(&self.file_key, &nonce)?);
            self.buffer.clear();
        }
        while !data.is_empty() {
            // Decrypt a full chunk only once a byte beyond it proves it is not the end.
            let want = (ENCRYPTED_CHUNK_SIZE + 1).saturating_sub(self.buffer.len());
            let (head, tail) = data.split_at(want.min(data.len()));
            self.buffer.extend_from_slice(head);
            data = tail;
            if self.buffer.len() > ENCRYPTED_CHUNK_SIZE && self.open_full_chunk(out)? {
                // A final chunk followed by more bytes.
                return Err(Error::TrailingData);
            }
        }
        Ok(())
    }

    /// Opens the full-size chunk at the front of the buffer, trying non-final then final (as
    /// the reference implementation does). Returns whether it was final.
    fn open_full_chunk(&mut self, out: &mut Vec<u8>) -> Result<bool> {
        match self.open_chunk(ENCRYPTED_CHUNK_SIZE, false, out) {
            Ok(()) => Ok(false),
            Err(Error::Decrypt) => self.open_chunk(ENCRYPTED_CHUNK_SIZE, true, out).map(|()| true),
            Err(e) => Err(e),
        }
    }

    fn open_chunk(&mut self, len: usize, last: bool, out: &mut Vec<u8>) -> Result<()> {
        let key = self.key.as_ref().ok_or(Error::InvalidState)?;
        if self.counter == MAX_CHUNKS {
            return Err(Error::CounterExhausted);
        }
        let chunk = self.buffer.get(..len).ok_or(Error::Truncated)?;
        let plaintext =
            Zeroizing::new(aead_open(&key.0, &chunk_nonce(self.counter, last), &[], chunk)?);
        out.extend_from_slice(&plaintext);
        self.buffer.drain(..len);
        self.counter += 1;
        if last {
            self.state = DecryptState::Finished;
        }
        Ok(())
    }
}

impl fmt::Debug for StreamEncryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamEncryptor(chunk {}, ..)", self.counter)
    }
}

impl fmt::Debug for StreamDecryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamDecryptor(chunk {}, {:?}, ..)", self.counter, self.state)
    }
}

/// Decrypts a whole in-memory payload, returning the plaintext released before any error
/// alongside the result (the age test vectors check both).
pub fn decrypt_payload(file_key: &[u8; 16], payload: &[u8]) -> (Vec<u8>, Result<()>) {
    let mut out = Vec::new();
    let mut d = StreamDecryptor::new(file_key);
    let result = d.push(payload, &mut out).and_then(|()| d.finish(&mut out));
    (out, result)
}

/// Encrypts a whole in-memory payload (nonce || chunks).
pub fn encrypt_payload(
    file_key: &[u8; 16],
    plaintext: &[u8],
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<Vec<u8>> {
    let (mut e, nonce) = StreamEncryptor::new(file_key, rng)?;
    let mut out = nonce.to_vec();
    e.push(plaintext, &mut out)?;
    e.finish(&mut out)?;
    Ok(out)
}
