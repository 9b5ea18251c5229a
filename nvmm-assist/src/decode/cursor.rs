//! A bounded reader over the instruction bytes that enforces the
//! architectural 15-byte limit.

use super::DecodeError;

/// The longest instruction the CPU accepts; a longer one raises `#GP(0)`.
pub(super) const MAX_LEN: usize = 15;

/// Reads instruction bytes front to back, failing with
/// [`DecodeError::TooLong`] past byte 15 and [`DecodeError::Truncated`] past
/// the end of the input.
///
/// The input is cut to [`MAX_LEN`] bytes up front, so every read is one
/// bounds check against the cut slice; only a failed read works out which
/// of the two errors applies.
#[derive(Clone, Copy)]
pub(super) struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    #[inline(always)]
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        let bytes = bytes.get(..MAX_LEN).unwrap_or(bytes);
        Cursor { bytes, pos: 0 }
    }

    /// Bytes consumed so far: the length of the instruction once it is
    /// read. Never more than [`MAX_LEN`] = 15, since the input is cut to 15
    /// bytes, so the mask changes nothing (it only makes the narrowing
    /// visibly lossless).
    #[inline(always)]
    pub(super) fn len(&self) -> u8 {
        (self.pos & 0xF) as u8
    }

    /// The error of a read that would end at byte `end`: past the 15-byte
    /// limit the instruction is too long whatever follows, otherwise the
    /// input ended first.
    #[cold]
    #[inline(never)]
    fn end_error(end: usize) -> DecodeError {
        if end > MAX_LEN {
            DecodeError::TooLong
        } else {
            DecodeError::Truncated
        }
    }

    /// The next byte without consuming it.
    #[inline(always)]
    pub(super) fn peek(&self) -> Result<u8, DecodeError> {
        match self.bytes.get(self.pos) {
            Some(&b) => Ok(b),
            None => Err(Self::end_error(self.pos + 1)),
        }
    }

    /// Consumes one byte.
    #[inline(always)]
    pub(super) fn byte(&mut self) -> Result<u8, DecodeError> {
        let b = self.peek()?;
        self.pos += 1;
        Ok(b)
    }

    /// Consumes `n` (at most 8) bytes as a little-endian value. The length
    /// limit is checked before the input end: an instruction that cannot fit
    /// in 15 bytes is too long whatever follows.
    #[inline(always)]
    pub(super) fn le(&mut self, n: u8) -> Result<u64, DecodeError> {
        let end = self.pos + usize::from(n.min(8));
        let Some(slice) = self.bytes.get(self.pos..end) else {
            return Err(Self::end_error(end));
        };
        let value = match *slice {
            [a] => u64::from(a),
            [a, b] => u64::from(u16::from_le_bytes([a, b])),
            [a, b, c, d] => u64::from(u32::from_le_bytes([a, b, c, d])),
            [a, b, c, d, e, f, g, h] => u64::from_le_bytes([a, b, c, d, e, f, g, h]),
            _ => slice
                .iter()
                .rev()
                .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)),
        };
        self.pos = end;
        Ok(value)
    }
}

/// Sign-extends the low `bytes` bytes of `value` to 64 bits.
#[inline(always)]
pub(super) const fn sign_extend(value: u64, bytes: u8) -> i64 {
    match bytes {
        1 => value as u8 as i8 as i64,
        2 => value as u16 as i16 as i64,
        4 => value as u32 as i32 as i64,
        _ => value as i64,
    }
}

/// `value` truncated to `bytes` bytes (1, 2, 4 or 8).
#[inline(always)]
pub(super) const fn truncate(value: u64, bytes: u8) -> u64 {
    match bytes {
        1 => value & 0xFF,
        2 => value & 0xFFFF,
        4 => value & 0xFFFF_FFFF,
        _ => value,
    }
}
