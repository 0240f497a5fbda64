//! Bounds-checked byte reader and writer helpers shared by every binary format in the crate.
//!
//! All parsing goes through [`Reader`], which returns [`Error::Malformed`] instead of
//! indexing out of bounds, so no input can make a decoder panic.

use crate::error::{Error, Result};

/// A cursor over untrusted bytes.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// `what` names the structure in errors.
    pub(crate) fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Self { rest: bytes, what }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.rest.len() < n {
            return Err(Error::Malformed(self.what));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A strict boolean: only 0 and 1 are accepted, which keeps encodings canonical.
    pub(crate) fn bool(&mut self) -> Result<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(Error::Malformed(self.what)),
        }
    }

    /// A u32 count that must not exceed `max` (checked before anything is allocated).
    pub(crate) fn count(&mut self, max: usize) -> Result<usize> {
        let n = usize::try_from(self.u32()?).map_err(|_| Error::Malformed(self.what))?;
        if n > max {
            return Err(Error::Malformed(self.what));
        }
        Ok(n)
    }

    /// A u32-length-prefixed byte string of at most `max` bytes.
    pub(crate) fn bytes(&mut self, max: usize) -> Result<&'a [u8]> {
        let n = self.count(max)?;
        self.take(n)
    }

    /// Fails unless every byte was consumed: trailing bytes are an error, never ignored.
    pub(crate) fn finish(self) -> Result<()> {
        if self.rest.is_empty() { Ok(()) } else { Err(Error::Malformed(self.what)) }
    }
}

/// Appends a u32-length-prefixed byte string. Callers bound `bytes` far below `u32::MAX`.
pub(crate) fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&len_u32(bytes.len()).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// A length as u32, saturating: every length the crate writes is bounded by a constant far
/// below `u32::MAX`, and a saturated length would make the decoder reject the data.
pub(crate) fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
