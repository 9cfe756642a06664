//! Huffman tables and the entropy-coded bit reader of a JPEG scan (ITU T.81 Annex C and F.2.2).

use super::*;

/// Number of leading code bits resolved by one table look-up.
pub(super) const LOOKUP_BITS: u32 = 9;

/// A Huffman table in the canonical form of T.81 F.2.2.3, plus a look-up table for short codes.
#[derive(Clone, Debug)]
pub(super) struct Huffman {
    /// `lookup[prefix]` = `(code length << 8) | symbol` for codes of at most `LOOKUP_BITS` bits;
    /// 0 when the prefix does not start such a code.
    pub(super) lookup: Vec<u16>,
    /// Largest code of each length 1..=16 (index = length), -1 when there is none.
    pub(super) maxcode: [i32; 17],
    /// Smallest code of each length.
    pub(super) mincode: [i32; 17],
    /// Index into `values` of the first symbol of each length.
    pub(super) valptr: [i32; 17],
    pub(super) values: Vec<u8>,
}

impl Huffman {
    /// Builds the table from the 16 code-length counts and the symbols of a DHT segment.
    /// `None` when the counts describe more codes than fit (an invalid table).
    pub(super) fn new(counts: &[u8; 16], values: &[u8]) -> Option<Self> {
        let mut maxcode = [-1i32; 17];
        let mut mincode = [0i32; 17];
        let mut valptr = [0i32; 17];
        let mut lookup = vec![0u16; 1 << LOOKUP_BITS];
        let mut code: i32 = 0;
        let mut k: i32 = 0;
        for len in 1..=16usize {
            let n = i32::from(counts[len - 1]);
            valptr[len] = k;
            mincode[len] = code;
            if n > 0 {
                if code + n > (1 << len) {
                    return None;
                }
                for c in code..code + n {
                    if len as u32 <= LOOKUP_BITS {
                        let symbol = *values.get((k + c - code) as usize)?;
                        let shift = LOOKUP_BITS - len as u32;
                        let first = (c as usize) << shift;
                        for entry in &mut lookup[first..first + (1usize << shift)] {
                            *entry = ((len as u16) << 8) | u16::from(symbol);
                        }
                    }
                }
                maxcode[len] = code + n - 1;
            }
            code = (code + n) << 1;
            k += n;
        }
        if values.len() < k as usize {
            return None;
        }
        Some(Huffman {
            lookup,
            maxcode,
            mincode,
            valptr,
            values: values.to_vec(),
        })
    }

    /// Decodes one symbol; `None` for a bit pattern that is no code of this table.
    pub(super) fn decode(&self, bits: &mut BitReader<'_>) -> Option<u8> {
        let peek = bits.peek(16);
        let entry = self.lookup[(peek >> (16 - LOOKUP_BITS)) as usize];
        if entry != 0 {
            bits.consume((entry >> 8) as u32);
            return Some((entry & 0xFF) as u8);
        }
        for len in (LOOKUP_BITS as usize + 1)..=16 {
            let code = (peek >> (16 - len)) as i32;
            if self.maxcode[len] >= 0 && code <= self.maxcode[len] && code >= self.mincode[len] {
                bits.consume(len as u32);
                let index = self.valptr[len] + code - self.mincode[len];
                return self.values.get(index as usize).copied();
            }
        }
        None
    }
}

/// Reads entropy-coded bits (T.81 F.2.2.5), removing stuffed zero bytes, and stops at the first
/// marker or at the end of the file. Bits asked for beyond that point read as 1 and set `overrun`
/// once they are consumed.
pub(super) struct BitReader<'a> {
    pub(super) data: &'a [u8],
    /// Index of the next byte to load.
    pub(super) pos: usize,
    pub(super) acc: u64,
    /// Bits held in `acc` (from the top), real data plus padding.
    pub(super) nbits: u32,
    /// How many of the last `nbits` are padding.
    pub(super) pad: u32,
    /// A marker or the end of the file was reached; `pos` points at the marker's 0xFF.
    pub(super) hit_end: bool,
    pub(super) at_eof: bool,
    /// Padding bits were consumed: the data ran out.
    pub(super) overrun: bool,
}

impl<'a> BitReader<'a> {
    pub(super) fn new(data: &'a [u8], pos: usize) -> Self {
        BitReader {
            data,
            pos,
            acc: 0,
            nbits: 0,
            pad: 0,
            hit_end: false,
            at_eof: false,
            overrun: false,
        }
    }

    pub(super) fn fill(&mut self) {
        while self.nbits <= 56 {
            let byte = if self.hit_end {
                self.pad += 8;
                0xFF
            } else {
                match self.data.get(self.pos) {
                    None => {
                        self.hit_end = true;
                        self.at_eof = true;
                        continue;
                    }
                    Some(&0xFF) => match self.data.get(self.pos + 1) {
                        Some(&0x00) => {
                            self.pos += 2;
                            0xFF
                        }
                        None => {
                            self.hit_end = true;
                            self.at_eof = true;
                            continue;
                        }
                        Some(_) => {
                            self.hit_end = true;
                            continue;
                        }
                    },
                    Some(&b) => {
                        self.pos += 1;
                        b
                    }
                }
            };
            self.acc |= u64::from(byte) << (56 - self.nbits);
            self.nbits += 8;
        }
    }

    /// The next `n` (1..=16) bits, without consuming them.
    pub(super) fn peek(&mut self, n: u32) -> u32 {
        if self.nbits < n {
            self.fill();
        }
        (self.acc >> (64 - n)) as u32
    }

    pub(super) fn consume(&mut self, n: u32) {
        if self.nbits < n {
            self.fill();
        }
        self.acc <<= n;
        self.nbits -= n;
        if self.nbits < self.pad {
            self.overrun = true;
            self.pad = self.nbits;
        }
    }

    /// Skips `n` (0..=16) bits, e.g. the magnitude bits that follow a Huffman symbol.
    pub(super) fn skip(&mut self, n: u32) {
        if n > 0 {
            self.consume(n);
        }
    }

    /// Drops the buffered bits and resumes reading right after a restart marker, if one comes
    /// next. Returns false when the next marker is not RSTn (the scan ended) or the file ended.
    pub(super) fn restart(&mut self) -> bool {
        if !self.hit_end {
            // The interval held more data than its MCUs needed: step over it to the marker.
            self.pos = next_marker(self.data, self.pos);
        }
        self.acc = 0;
        self.nbits = 0;
        self.pad = 0;
        self.hit_end = false;
        let mut p = self.pos;
        while self.data.get(p) == Some(&0xFF) && self.data.get(p + 1) == Some(&0xFF) {
            p += 1;
        }
        match (self.data.get(p), self.data.get(p + 1)) {
            (Some(&0xFF), Some(&m)) if (0xD0..=0xD7).contains(&m) => {
                self.pos = p + 2;
                true
            }
            (Some(_), Some(_)) => {
                self.pos = p;
                false
            }
            _ => {
                self.at_eof = true;
                self.pos = self.data.len();
                false
            }
        }
    }
}
