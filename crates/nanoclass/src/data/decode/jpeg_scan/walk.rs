//! Walking one scan's Huffman symbols, MCU by MCU, for sequential and progressive (DC and AC first) scans, to count the MCUs it holds data for.

use super::*;

/// Decodes the Huffman symbols of one scan and counts the MCUs it holds data for.
pub(super) fn walk_scan(
    data: &[u8],
    start: usize,
    frame: &Frame,
    spec: &ScanSpec<'_>,
    tables: &[Option<Huffman>; 8],
    restart_interval: u16,
) -> WalkEnd {
    let (width, height) = (
        u64::from(frame.header.width),
        u64::from(frame.header.height),
    );
    if width == 0 || height == 0 {
        return WalkEnd::Unchecked;
    }
    let (h_max, v_max) = (u64::from(frame.h_max), u64::from(frame.v_max));
    let interleaved = spec.components.len() > 1;
    // MCUs of the scan, and the blocks of each component in one MCU (T.81 A.2).
    let (mcus_total, blocks_per_mcu): (u64, Vec<u64>) = if interleaved {
        let mcux = div_ceil(width, 8 * h_max);
        let mcuy = div_ceil(height, 8 * v_max);
        let blocks = spec
            .components
            .iter()
            .map(|(c, _, _)| u64::from(c.h) * u64::from(c.v));
        (mcux * mcuy, blocks.collect())
    } else {
        let c = spec.components[0].0;
        let cw = div_ceil(width * u64::from(c.h), h_max);
        let ch = div_ceil(height * u64::from(c.v), v_max);
        (div_ceil(cw, 8) * div_ceil(ch, 8), vec![1])
    };
    let dc_scan = spec.ss == 0;
    let progressive = frame.progressive;
    for (_, dc, ac) in &spec.components {
        let needs_dc = dc_scan && !(progressive && spec.ah > 0);
        let needs_ac = !progressive || !dc_scan;
        if (needs_dc && tables[*dc].is_none()) || (needs_ac && spec.se > 0 && tables[*ac].is_none())
        {
            return WalkEnd::Unchecked;
        }
    }
    let mut bits = BitReader::new(data, start);
    let mut eobrun: u32 = 0;
    let mut left_in_interval = restart_interval;
    for mcu in 0..mcus_total {
        if restart_interval > 0 {
            if left_in_interval == 0 {
                if !bits.restart() {
                    return short(mcu, mcus_total, bits.at_eof);
                }
                eobrun = 0;
                left_in_interval = restart_interval;
            }
            left_in_interval -= 1;
        }
        for (i, (_, dc, ac)) in spec.components.iter().enumerate() {
            for _ in 0..blocks_per_mcu[i] {
                let ok = if !progressive {
                    sequential_block(&mut bits, tables[*dc].as_ref(), tables[*ac].as_ref())
                } else if dc_scan && spec.ah == 0 {
                    dc_first_block(&mut bits, tables[*dc].as_ref())
                } else if dc_scan {
                    bits.skip(1);
                    true
                } else {
                    ac_first_block(&mut bits, tables[*ac].as_ref(), spec, &mut eobrun)
                };
                if !ok {
                    // An invalid code: data that ran out reads as padding, which is no code.
                    return if bits.hit_end && bits.nbits.saturating_sub(bits.pad) < 16 {
                        short(mcu, mcus_total, bits.at_eof)
                    } else {
                        WalkEnd::Unchecked
                    };
                }
            }
        }
        if bits.overrun {
            return short(mcu, mcus_total, bits.at_eof);
        }
    }
    WalkEnd::Done
}

/// A shortfall in the last MCU of a scan is tolerated (some encoders drop its final padding
/// bits); an earlier one is reported.
pub(super) fn short(mcus_done: u64, mcus_total: u64, at_eof: bool) -> WalkEnd {
    if mcus_done + 1 >= mcus_total {
        WalkEnd::Done
    } else {
        WalkEnd::Short {
            mcus_done,
            mcus_total,
            at_eof,
        }
    }
}

pub(super) fn sequential_block(
    bits: &mut BitReader<'_>,
    dc: Option<&Huffman>,
    ac: Option<&Huffman>,
) -> bool {
    let (Some(dc), Some(ac)) = (dc, ac) else {
        return false;
    };
    let Some(s) = dc.decode(bits) else {
        return false;
    };
    if s > 16 {
        return false;
    }
    bits.skip(u32::from(s));
    let mut k = 1u32;
    while k < 64 {
        let Some(rs) = ac.decode(bits) else {
            return false;
        };
        let (r, s) = (u32::from(rs >> 4), u32::from(rs & 0x0F));
        if s == 0 {
            if r == 15 {
                k += 16;
                continue;
            }
            break;
        }
        k += r;
        bits.skip(s);
        k += 1;
    }
    k <= 64
}

pub(super) fn dc_first_block(bits: &mut BitReader<'_>, dc: Option<&Huffman>) -> bool {
    let Some(dc) = dc else { return false };
    let Some(s) = dc.decode(bits) else {
        return false;
    };
    if s > 16 {
        return false;
    }
    bits.skip(u32::from(s));
    true
}

pub(super) fn ac_first_block(
    bits: &mut BitReader<'_>,
    ac: Option<&Huffman>,
    spec: &ScanSpec<'_>,
    eobrun: &mut u32,
) -> bool {
    if *eobrun > 0 {
        *eobrun -= 1;
        return true;
    }
    let Some(ac) = ac else { return false };
    let mut k = u32::from(spec.ss);
    let end = u32::from(spec.se);
    while k <= end {
        let Some(rs) = ac.decode(bits) else {
            return false;
        };
        let (r, s) = (u32::from(rs >> 4), u32::from(rs & 0x0F));
        if s == 0 {
            if r < 15 {
                // EOBRUN (G.1.2.2): 2^r + r extra bits, this block included.
                let extra = if r > 0 { bits.peek(r) } else { 0 };
                bits.skip(r);
                *eobrun = (1u32 << r) + extra - 1;
                break;
            }
            k += 16;
            continue;
        }
        k += r;
        bits.skip(s);
        k += 1;
    }
    k <= end + 1
}
