//! A walk over a JPEG's markers and entropy-coded data that checks every scan holds data for
//! every MCU the frame header announces.
//!
//! Why this exists: when a scan's entropy-coded data ends early (an `EOI` or other marker comes
//! before the last MCU, e.g. a frame header (SOF) that claims a larger image than the scan
//! encodes, or a file cut short and re-terminated), both jpeg-decoder 0.3 and zune-jpeg 0.5
//! (even in strict mode) pad the missing bits with zeros and return `Ok` with a garbage lower part
//! of the image. A classifier must not train on such pixels, so `decode_bytes` runs this check
//! first and reports the file instead.
//!
//! The walk decodes Huffman symbols only (no dequantisation, no IDCT), so it costs a fraction of a
//! full decode. It checks sequential (baseline and extended) scans, and the DC scans and first AC
//! scans of progressive frames. AC refinement scans of progressive frames need the coefficient
//! history to be parsed and are skipped (their data is stepped over). Anything the walk does not
//! understand (lossless or arithmetic coding, hierarchical frames, invalid Huffman tables or
//! codes) yields [`ScanCheck::Unchecked`], and the decoder's own verdict stands.
//!
//! Marker and segment layout: ITU-T T.81 (the JPEG standard), Annex B; Huffman decoding: F.2.2.3;
//! progressive scans: G.1.2.

mod bits;
mod walk;

use bits::*;
use walk::*;

/// What the frame header (SOF segment) says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    /// Width in pixels, as stored (before any EXIF orientation).
    pub width: u16,
    /// Height in pixels, as stored.
    pub height: u16,
    /// Sample precision in bits (8 for almost every file; 2..=16 for lossless).
    pub precision: u8,
    /// Number of colour components (1 gray, 3 YCbCr/RGB, 4 CMYK/YCCK).
    pub components: u8,
    /// Progressive DCT (SOF2): the decoder keeps every coefficient of the image until the last
    /// scan.
    pub progressive: bool,
    /// 8x8 blocks of all components together, counted the way the decoder lays them out: each
    /// component covers whole MCUs (`ceil(width / (8 * h_max)) * h` blocks across, likewise
    /// down; T.81 A.2).
    pub blocks: u64,
}

/// The verdict of [`check_scans`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ScanCheck {
    /// Every scan that was checked holds data for all of its MCUs.
    Complete,
    /// Scan number `scan` (1-based) holds data for only `mcus_done` of its `mcus_total` MCUs.
    /// `at_eof` is true when the file itself ended, false when a marker came too early.
    Short {
        scan: usize,
        mcus_done: u64,
        mcus_total: u64,
        at_eof: bool,
    },
    /// The walk cannot judge this file; rely on the decoder.
    Unchecked,
}

#[derive(Clone, Copy, Debug)]
struct Component {
    id: u8,
    h: u8,
    v: u8,
}

#[derive(Clone, Debug)]
struct Frame {
    header: FrameHeader,
    progressive: bool,
    components: Vec<Component>,
    h_max: u8,
    v_max: u8,
}

/// Index of the next marker (0xFF followed by a byte that is neither 0x00 nor RSTn) at or after
/// `pos`, or the file length.
fn next_marker(data: &[u8], mut pos: usize) -> usize {
    while pos + 1 < data.len() {
        if data[pos] == 0xFF {
            let m = data[pos + 1];
            if m != 0x00 && m != 0xFF && !(0xD0..=0xD7).contains(&m) {
                return pos;
            }
        }
        pos += 1;
    }
    data.len()
}

fn be16(data: &[u8], pos: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*data.get(pos)?, *data.get(pos + 1)?]))
}

fn parse_sof(segment: &[u8], marker: u8) -> Option<Frame> {
    let precision = *segment.first()?;
    let height = be16(segment, 1)?;
    let width = be16(segment, 3)?;
    let count = *segment.get(5)?;
    let mut components = Vec::with_capacity(usize::from(count));
    for i in 0..usize::from(count) {
        let base = 6 + 3 * i;
        let id = *segment.get(base)?;
        let sampling = *segment.get(base + 1)?;
        let (h, v) = (sampling >> 4, sampling & 0x0F);
        if !(1..=4).contains(&h) || !(1..=4).contains(&v) {
            return None;
        }
        components.push(Component { id, h, v });
    }
    if components.is_empty() {
        return None;
    }
    let h_max = components.iter().map(|c| c.h).max()?;
    let v_max = components.iter().map(|c| c.v).max()?;
    let mcus_x = div_ceil(u64::from(width), 8 * u64::from(h_max));
    let mcus_y = div_ceil(u64::from(height), 8 * u64::from(v_max));
    let blocks = components
        .iter()
        .map(|c| mcus_x * u64::from(c.h) * mcus_y * u64::from(c.v))
        .sum();
    let progressive = marker == 0xC2;
    Some(Frame {
        header: FrameHeader {
            width,
            height,
            precision,
            components: count,
            progressive,
            blocks,
        },
        progressive,
        components,
        h_max,
        v_max,
    })
}

/// Parses a DHT segment into the table slots (`0..4` DC, `4..8` AC).
fn parse_dht(segment: &[u8], tables: &mut [Option<Huffman>; 8]) -> Option<()> {
    let mut p = 0;
    while p < segment.len() {
        let tc_th = *segment.get(p)?;
        let (class, id) = (tc_th >> 4, tc_th & 0x0F);
        if class > 1 || id > 3 {
            return None;
        }
        let counts: [u8; 16] = segment.get(p + 1..p + 17)?.try_into().ok()?;
        let total: usize = counts.iter().map(|&c| usize::from(c)).sum();
        let values = segment.get(p + 17..p + 17 + total)?;
        tables[usize::from(class) * 4 + usize::from(id)] = Some(Huffman::new(&counts, values)?);
        p += 17 + total;
    }
    Some(())
}

fn is_sof(marker: u8) -> bool {
    (0xC0..=0xCF).contains(&marker) && marker != 0xC4 && marker != 0xC8 && marker != 0xCC
}

struct ScanSpec<'f> {
    /// Components of the scan with their (DC, AC) table indices.
    components: Vec<(&'f Component, usize, usize)>,
    ss: u8,
    se: u8,
    ah: u8,
}

enum WalkEnd {
    /// All MCUs decoded; `pos` is where the walk stopped (inside or after the scan data).
    Done,
    Short {
        mcus_done: u64,
        mcus_total: u64,
        at_eof: bool,
    },
    Unchecked,
}

/// The frame header, read by stepping over the segments before the first SOF (nothing after it
/// is read, no entropy-coded data is touched). `None` when no SOF comes before the first scan or
/// the end of the data, or when it cannot be parsed.
pub(crate) fn frame_header(data: &[u8]) -> Option<FrameHeader> {
    let mut pos = 2;
    loop {
        while data.get(pos) == Some(&0xFF) && data.get(pos + 1) == Some(&0xFF) {
            pos += 1;
        }
        if data.get(pos) != Some(&0xFF) {
            return None;
        }
        let marker = *data.get(pos + 1)?;
        pos += 2;
        match marker {
            0x01 | 0xD0..=0xD7 => continue,
            // SOI, EOI, SOS: no frame header before the scan.
            0xD8..=0xDA => return None,
            _ => {}
        }
        let len = usize::from(be16(data, pos)?);
        let segment = data.get(pos + 2..pos + len)?;
        if is_sof(marker) {
            return parse_sof(segment, marker).map(|f| f.header);
        }
        pos += len;
    }
}

/// Walks the whole file and checks every scan. Returns the frame header (when one was found)
/// and the verdict.
pub(crate) fn check_scans(data: &[u8]) -> (Option<FrameHeader>, ScanCheck) {
    let mut tables: [Option<Huffman>; 8] = Default::default();
    let mut frame: Option<Frame> = None;
    let mut restart_interval: u16 = 0;
    let mut scan_index = 0usize;
    let mut pos = 2;
    let header = |frame: &Option<Frame>| frame.as_ref().map(|f| f.header);
    loop {
        while data.get(pos) == Some(&0xFF) && data.get(pos + 1) == Some(&0xFF) {
            pos += 1;
        }
        if data.get(pos) != Some(&0xFF) {
            return (header(&frame), ScanCheck::Unchecked);
        }
        let Some(&marker) = data.get(pos + 1) else {
            return (header(&frame), ScanCheck::Unchecked);
        };
        pos += 2;
        match marker {
            0x01 | 0xD0..=0xD7 => continue,
            0xD8 => return (header(&frame), ScanCheck::Unchecked),
            0xD9 => {
                let verdict = if scan_index > 0 {
                    ScanCheck::Complete
                } else {
                    ScanCheck::Unchecked
                };
                return (header(&frame), verdict);
            }
            _ => {}
        }
        let Some(len) = be16(data, pos).map(usize::from) else {
            return (header(&frame), ScanCheck::Unchecked);
        };
        // `len` counts its own 2 bytes; a length below 2 gives an empty range and stops here.
        let Some(segment) = data.get(pos + 2..pos + len) else {
            return (header(&frame), ScanCheck::Unchecked);
        };
        match marker {
            0xC4 => {
                let parsed = parse_dht(segment, &mut tables);
                if parsed.is_none() {
                    return (header(&frame), ScanCheck::Unchecked);
                }
            }
            0xDD => match be16(segment, 0) {
                Some(ri) => restart_interval = ri,
                None => return (header(&frame), ScanCheck::Unchecked),
            },
            m if is_sof(m) => {
                if frame.is_some() {
                    return (header(&frame), ScanCheck::Unchecked);
                }
                frame = parse_sof(segment, m);
                let checkable = matches!(m, 0xC0..=0xC2);
                if frame.is_none() || !checkable {
                    return (header(&frame), ScanCheck::Unchecked);
                }
            }
            0xDA => {
                let Some(f) = frame.as_ref() else {
                    return (None, ScanCheck::Unchecked);
                };
                scan_index += 1;
                let scan_start = pos + len;
                let end = match parse_sos(segment, f) {
                    Some(spec) if !(f.progressive && spec.ss > 0 && spec.ah > 0) => {
                        walk_scan(data, scan_start, f, &spec, &tables, restart_interval)
                    }
                    Some(_) => WalkEnd::Done, // AC refinement: not checked, stepped over below
                    None => WalkEnd::Unchecked,
                };
                match end {
                    WalkEnd::Done => {}
                    WalkEnd::Short {
                        mcus_done,
                        mcus_total,
                        at_eof,
                    } => {
                        let verdict = ScanCheck::Short {
                            scan: scan_index,
                            mcus_done,
                            mcus_total,
                            at_eof,
                        };
                        return (header(&frame), verdict);
                    }
                    WalkEnd::Unchecked => return (header(&frame), ScanCheck::Unchecked),
                }
                pos = next_marker(data, scan_start);
                continue;
            }
            _ => {}
        }
        pos += len;
    }
}

fn parse_sos<'f>(segment: &[u8], frame: &'f Frame) -> Option<ScanSpec<'f>> {
    let count = usize::from(*segment.first()?);
    let mut components = Vec::with_capacity(count);
    for i in 0..count {
        let id = *segment.get(1 + 2 * i)?;
        let tables = *segment.get(2 + 2 * i)?;
        let (dc, ac) = (usize::from(tables >> 4), usize::from(tables & 0x0F));
        if dc > 3 || ac > 3 {
            return None;
        }
        let component = frame.components.iter().find(|c| c.id == id)?;
        components.push((component, dc, 4 + ac));
    }
    let base = 1 + 2 * count;
    let ss = *segment.get(base)?;
    let se = *segment.get(base + 1)?;
    let ah = *segment.get(base + 2)? >> 4;
    if components.is_empty() || se > 63 || ss > se {
        return None;
    }
    Some(ScanSpec {
        components,
        ss,
        se,
        ah,
    })
}

fn div_ceil(a: u64, b: u64) -> u64 {
    a.div_ceil(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_jpeg(width: u32, height: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([
                (x * 7 % 256) as u8,
                (y * 5 % 256) as u8,
                ((x + y) % 256) as u8,
            ])
        });
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
            .encode_image(&img)
            .expect("encoding to memory cannot fail");
        out
    }

    fn sof_offset(data: &[u8]) -> usize {
        data.windows(2)
            .position(|w| w == [0xFF, 0xC0])
            .expect("baseline SOF0 present")
    }

    #[test]
    fn complete_file_is_complete() {
        let data = encode_jpeg(64, 48);
        let (header, verdict) = check_scans(&data);
        assert_eq!(verdict, ScanCheck::Complete);
        let header = header.expect("frame header");
        assert_eq!(
            (header.width, header.height, header.components),
            (64, 48, 3)
        );
    }

    #[test]
    fn taller_sof_than_scan_is_short() {
        let mut data = encode_jpeg(64, 64);
        let sof = sof_offset(&data);
        // SOF0: FF C0 len(2) precision(1) height(2) width(2)
        data[sof + 5..sof + 7].copy_from_slice(&128u16.to_be_bytes());
        match check_scans(&data).1 {
            ScanCheck::Short {
                mcus_total,
                mcus_done,
                at_eof,
                ..
            } => {
                // The image crate's encoder samples 1x1 (MCUs of 8x8 pixels): the scan holds
                // 8 x 8 MCUs, the header announces 8 x 16.
                assert_eq!(mcus_total, 128);
                assert_eq!(mcus_done, 64);
                assert!(!at_eof);
            }
            other => panic!("expected Short, got {other:?}"),
        }
    }

    #[test]
    fn cut_file_is_short_at_eof() {
        let data = encode_jpeg(64, 64);
        let cut = &data[..data.len() / 2];
        match check_scans(cut).1 {
            ScanCheck::Short {
                at_eof,
                mcus_done,
                mcus_total,
                ..
            } => {
                assert!(at_eof);
                assert!(mcus_done < mcus_total);
            }
            other => panic!("expected Short, got {other:?}"),
        }
    }

    #[test]
    fn huffman_canonical_codes() {
        // Two codes of length 2 (00, 01) and one of length 3 (100).
        let mut counts = [0u8; 16];
        counts[1] = 2;
        counts[2] = 1;
        let table = Huffman::new(&counts, &[7, 9, 11]).expect("valid table");
        let data = [0b0110_0001, 0b1111_1111, 0x00];
        let mut bits = BitReader::new(&data, 0);
        assert_eq!(table.decode(&mut bits), Some(9)); // 01
        assert_eq!(table.decode(&mut bits), Some(11)); // 100
        assert_eq!(table.decode(&mut bits), Some(7)); // 00
        assert!(!bits.overrun);
    }
}
