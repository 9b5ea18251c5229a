//! A bounded reader over the instruction bytes that enforces the
//! architectural 15-byte limit.

use super::DecodeError;

/// The longest instruction the CPU accepts; a longer one raises `#GP(0)`.
pub(super) const MAX_LEN: usize = 15;

/// Reads instruction bytes front to back, failing with
/// [`DecodeError::TooLong`] past byte 15 and [`DecodeError::Truncated`] past
/// the end of the input.
pub(super) struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        Cursor { bytes, pos: 0 }
    }

    /// Bytes consumed so far (never more than [`MAX_LEN`]).
    pub(super) fn pos(&self) -> usize {
        self.pos
    }

    /// The next byte without consuming it.
    pub(super) fn peek(&self) -> Result<u8, DecodeError> {
        if self.pos >= MAX_LEN {
            return Err(DecodeError::TooLong);
        }
        self.bytes
            .get(self.pos)
            .copied()
            .ok_or(DecodeError::Truncated)
    }

    /// Consumes one byte.
    pub(super) fn byte(&mut self) -> Result<u8, DecodeError> {
        let b = self.peek()?;
        self.pos += 1;
        Ok(b)
    }

    /// Consumes `n` (at most 8) bytes as a little-endian value. The length
    /// limit is checked before the input end: an instruction that cannot fit
    /// in 15 bytes is too long whatever follows.
    pub(super) fn le(&mut self, n: u8) -> Result<u64, DecodeError> {
        let n = usize::from(n.min(8));
        let end = self.pos.saturating_add(n);
        if end > MAX_LEN {
            return Err(DecodeError::TooLong);
        }
        let slice = self
            .bytes
            .get(self.pos..end)
            .ok_or(DecodeError::Truncated)?;
        let value = slice
            .iter()
            .rev()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        self.pos = end;
        Ok(value)
    }
}

/// Sign-extends the low `bytes` bytes of `value` to 64 bits.
pub(super) const fn sign_extend(value: u64, bytes: u8) -> i64 {
    match bytes {
        1 => value as u8 as i8 as i64,
        2 => value as u16 as i16 as i64,
        4 => value as u32 as i32 as i64,
        _ => value as i64,
    }
}

/// `value` truncated to `bytes` bytes (1, 2, 4 or 8).
pub(super) const fn truncate(value: u64, bytes: u8) -> u64 {
    match bytes {
        1 => value & 0xFF,
        2 => value & 0xFFFF,
        4 => value & 0xFFFF_FFFF,
        _ => value,
    }
}
