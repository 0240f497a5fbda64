//! The primitive encoding: big-endian integers, length-prefixed bytes and strings, and
//! the frame-length prefix. Every read is bounds-checked and returns an error, never panics.

use crate::WireError;

/// Bytes of the frame-length prefix (`u32`, big endian).
pub const LEN_PREFIX: usize = 4;

/// Checks a frame-length prefix against `max` before anything is allocated for the body.
pub fn frame_len(prefix: [u8; LEN_PREFIX], max: usize) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max {
        return Err(WireError::FrameTooLarge { len, max });
    }
    Ok(len)
}

/// Splits one complete frame off the front of `buf`: `Ok(Some((body, consumed)))`,
/// `Ok(None)` when more bytes are needed, or an error for a prefix over `max`.
pub fn split_frame(buf: &[u8], max: usize) -> Result<Option<(&[u8], usize)>, WireError> {
    let Some((prefix, rest)) = buf.split_first_chunk::<LEN_PREFIX>() else { return Ok(None) };
    let len = frame_len(*prefix, max)?;
    match rest.get(..len) {
        Some(body) => Ok(Some((body, LEN_PREFIX + len))),
        None => Ok(None),
    }
}

/// Appends to a byte vector. Lengths are written with the widths the reader expects; the
/// caller keeps field sizes within the limits (checked again when the frame is finished).
#[derive(Debug, Default)]
pub(crate) struct Writer {
    pub(crate) buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }
    pub(crate) fn raw(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }
    /// Opaque bytes with a `u32` length: the frame limit keeps them far below 4 GiB.
    pub(crate) fn bytes(&mut self, v: &[u8]) {
        self.u32(u32::try_from(v.len()).unwrap_or(u32::MAX));
        self.raw(v);
    }
    /// A string with a `u16` length; every string field is limited well below 64 KiB.
    pub(crate) fn str(&mut self, v: &str) {
        self.u16(u16::try_from(v.len()).unwrap_or(u16::MAX));
        self.raw(v.as_bytes());
    }
    pub(crate) fn opt<T>(&mut self, v: Option<&T>, f: impl FnOnce(&mut Self, &T)) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                f(self, v);
            }
        }
    }
    pub(crate) fn list<T>(&mut self, v: &[T], mut f: impl FnMut(&mut Self, &T)) {
        self.u16(u16::try_from(v.len()).unwrap_or(u16::MAX));
        for item in v {
            f(self, item);
        }
    }
}

/// Reads from a borrowed frame body.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.buf.len() {
            return Err(WireError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let Some((head, tail)) = self.buf.split_first_chunk::<N>() else {
            return Err(WireError::Truncated);
        };
        self.buf = tail;
        Ok(*head)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    /// Only 0 and 1: a canonical encoding means decode-then-encode gives the same bytes.
    pub(crate) fn bool(&mut self) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError::Invalid("bool")),
        }
    }
    pub(crate) fn bytes(&mut self, max: usize, field: &'static str) -> Result<Vec<u8>, WireError> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(WireError::FieldTooLong(field));
        }
        Ok(self.take(len)?.to_vec())
    }
    pub(crate) fn str(&mut self, max: usize, field: &'static str) -> Result<String, WireError> {
        let len = usize::from(self.u16()?);
        if len > max {
            return Err(WireError::FieldTooLong(field));
        }
        let raw = self.take(len)?;
        std::str::from_utf8(raw).map(str::to_owned).map_err(|_| WireError::Invalid(field))
    }
    pub(crate) fn opt<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, WireError>,
    ) -> Result<Option<T>, WireError> {
        match self.u8()? {
            0 => Ok(None),
            1 => f(self).map(Some),
            _ => Err(WireError::Invalid("option tag")),
        }
    }
    /// A list of at most `max` items. Each item takes at least one byte, so a count larger
    /// than what is left is rejected before the vector is allocated.
    pub(crate) fn list<T>(
        &mut self,
        max: usize,
        field: &'static str,
        mut f: impl FnMut(&mut Self) -> Result<T, WireError>,
    ) -> Result<Vec<T>, WireError> {
        let n = usize::from(self.u16()?);
        if n > max {
            return Err(WireError::FieldTooLong(field));
        }
        if n > self.buf.len() {
            return Err(WireError::Truncated);
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(f(self)?);
        }
        Ok(out)
    }
    /// Rejects trailing bytes: a frame means exactly one thing.
    pub(crate) fn finish(self) -> Result<(), WireError> {
        if self.buf.is_empty() { Ok(()) } else { Err(WireError::TrailingBytes(self.buf.len())) }
    }
}
