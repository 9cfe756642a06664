//! Deterministic mutations of a seed file: bit flips, byte sets, integer overwrites, truncation,
//! duplicated and deleted ranges, and format-aware overwrites of the fields that size an
//! allocation (image width and height, TIFF strip and tile sizes, numbers in JSON headers).
//! PNG chunk CRCs are recomputed after most mutations, so that the decoder sees the mutated
//! header instead of stopping at the checksum.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Values that break size arithmetic: zero, one, powers of two and their neighbours, the
/// largest signed and unsigned values of 16 and 32 bits, and the sizes named by the size
/// policy (12 000, 65 535, 100 000).
pub const INTERESTING: [u64; 18] = [
    0,
    1,
    2,
    255,
    256,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    12_000,
    100_000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0xffff_fffe,
    16_383,
    16_384,
    1 << 20,
];

fn interesting(rng: &mut ChaCha8Rng) -> u64 {
    if rng.random_bool(0.8) {
        INTERESTING[rng.random_range(0..INTERESTING.len())]
    } else {
        rng.random::<u32>().into()
    }
}

fn put_be(data: &mut [u8], pos: usize, width: usize, value: u64) {
    for i in 0..width {
        if let Some(b) = data.get_mut(pos + i) {
            *b = (value >> (8 * (width - 1 - i))) as u8;
        }
    }
}

fn put_le(data: &mut [u8], pos: usize, width: usize, value: u64) {
    for i in 0..width {
        if let Some(b) = data.get_mut(pos + i) {
            *b = (value >> (8 * i)) as u8;
        }
    }
}

/// The CRC-32 of PNG chunks (ISO 3309, polynomial 0xEDB88320), bit by bit.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Recomputes the CRC of every whole chunk of a PNG (after the 8-byte signature).
pub fn fix_png_crcs(data: &mut [u8]) {
    let mut pos = 8;
    while pos + 12 <= data.len() {
        let len = u32::from_be_bytes([data[pos], data[pos + 1], data[pos + 2], data[pos + 3]]);
        let Some(end) = (pos + 8).checked_add(len as usize) else {
            return;
        };
        if end + 4 > data.len() {
            return;
        }
        let crc = crc32(&data[pos + 4..end]);
        data[end..end + 4].copy_from_slice(&crc.to_be_bytes());
        pos = end + 4;
    }
}

/// Offsets of the size fields of a format: `(offset, byte width, big endian)`.
fn size_fields(data: &[u8]) -> Vec<(usize, usize, bool)> {
    let mut fields = Vec::new();
    if data.starts_with(b"\x89PNG") {
        fields.extend([(16, 4, true), (20, 4, true)]);
    } else if data.starts_with(&[0xFF, 0xD8]) {
        // Every SOF segment: height at +5, width at +7 (T.81 B.2.2).
        let mut pos = 2;
        while pos + 4 <= data.len() {
            if data[pos] != 0xFF {
                break;
            }
            let marker = data[pos + 1];
            let len = usize::from(u16::from_be_bytes([data[pos + 2], data[pos + 3]]));
            if (0xC0..=0xCF).contains(&marker) && ![0xC4, 0xC8, 0xCC].contains(&marker) {
                fields.extend([(pos + 5, 2, true), (pos + 7, 2, true)]);
            }
            if marker == 0xDA || len < 2 {
                break;
            }
            pos += 2 + len;
        }
    } else if data.starts_with(b"GIF8") {
        fields.extend([(6, 2, false), (8, 2, false)]);
        if let Some(p) = data.iter().skip(13).position(|&b| b == 0x2C) {
            let d = 13 + p;
            fields.extend([(d + 5, 2, false), (d + 7, 2, false)]);
        }
    } else if data.starts_with(b"BM") {
        fields.extend([
            (18, 4, false),
            (22, 4, false),
            (28, 2, false),
            (34, 4, false),
        ]);
    } else if data.starts_with(b"RIFF") && data.get(8..12) == Some(b"WEBP") {
        for (i, w) in data.windows(4).enumerate() {
            match w {
                b"VP8X" => fields.extend([(i + 12, 3, false), (i + 15, 3, false)]),
                b"VP8L" => fields.push((i + 9, 4, false)),
                b"ANMF" => fields.extend([(i + 14, 3, false), (i + 17, 3, false)]),
                [0x9d, 0x01, 0x2a, _] => fields.extend([(i + 3, 2, false), (i + 5, 2, false)]),
                _ => {}
            }
        }
    } else if data.starts_with(b"II*\0") || data.starts_with(b"MM\0*") {
        fields.extend(tiff_fields(data));
    }
    fields
}

/// The value slots of the first IFD's size-related entries: ImageWidth (256), ImageLength
/// (257), BitsPerSample (258), SamplesPerPixel (277), RowsPerStrip (278), StripByteCounts (279),
/// TileWidth (322), TileLength (323), TileByteCounts (325).
fn tiff_fields(data: &[u8]) -> Vec<(usize, usize, bool)> {
    let be = data.starts_with(b"MM");
    let u16_at = |p: usize| -> Option<u16> {
        let b = [*data.get(p)?, *data.get(p + 1)?];
        Some(if be {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    };
    let u32_at = |p: usize| -> Option<u32> {
        let b = [
            *data.get(p)?,
            *data.get(p + 1)?,
            *data.get(p + 2)?,
            *data.get(p + 3)?,
        ];
        Some(if be {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    };
    let mut fields = Vec::new();
    let Some(ifd) = u32_at(4).map(|v| v as usize) else {
        return fields;
    };
    let Some(count) = u16_at(ifd) else {
        return fields;
    };
    for i in 0..usize::from(count) {
        let entry = ifd + 2 + 12 * i;
        let Some(tag) = u16_at(entry) else { break };
        if [256, 257, 258, 277, 278, 279, 322, 323, 325].contains(&tag) {
            // The value slot; a SHORT sits in its first two bytes.
            let short = u16_at(entry + 2) == Some(3);
            fields.push((entry + 8, if short { 2 } else { 4 }, be));
        }
    }
    fields
}

/// Replaces one decimal number of a JSON text (the safetensors header, a config.json) with an
/// interesting one: half of the time among the integers only (the sizes and counts), and half
/// of the time an integer replacement; otherwise written as a float, a negative, an exponent
/// out of range.
fn json_number(data: &mut Vec<u8>, rng: &mut ChaCha8Rng) {
    let text_end = data.len().min(1 << 16);
    let number_char = |b: u8| b.is_ascii_digit() || b".eE+-".contains(&b);
    let mut tokens: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while i < text_end {
        if data[i].is_ascii_digit() && (i == 0 || !number_char(data[i - 1])) {
            let mut end = i;
            while end < data.len() && number_char(data[end]) {
                end += 1;
            }
            tokens.push((i, end));
            i = end;
        } else {
            i += 1;
        }
    }
    if rng.random_bool(0.5) {
        let integers: Vec<(usize, usize)> = tokens
            .iter()
            .copied()
            .filter(|&(a, b)| data[a..b].iter().all(u8::is_ascii_digit))
            .collect();
        if !integers.is_empty() {
            tokens = integers;
        }
    }
    if tokens.is_empty() {
        return;
    }
    let (start, end) = tokens[rng.random_range(0..tokens.len())];
    let replacement = match rng.random_range(0..10) {
        0 => "1e999".to_owned(),
        1 => "-1".to_owned(),
        2 => "18446744073709551616".to_owned(),
        3 => format!("{}.5", interesting(rng)),
        4 => "1e-9".to_owned(),
        _ => interesting(rng).to_string(),
    };
    data.splice(start..end, replacement.into_bytes());
}

/// One mutation of `data`, chosen at random.
fn mutate_once(data: &mut Vec<u8>, rng: &mut ChaCha8Rng, json: bool) {
    let len = data.len();
    if len == 0 {
        data.push(rng.random());
        return;
    }
    // Mutations favour the start of the file, where the headers are.
    let pos = |rng: &mut ChaCha8Rng| {
        if rng.random_bool(0.5) {
            rng.random_range(0..len.min(64))
        } else {
            rng.random_range(0..len)
        }
    };
    if json && rng.random_bool(0.5) {
        json_number(data, rng);
        return;
    }
    match rng.random_range(0..10) {
        0 | 1 => {
            for _ in 0..rng.random_range(1..=4) {
                let p = pos(rng);
                data[p] ^= 1 << rng.random_range(0..8);
            }
        }
        2 => {
            let p = pos(rng);
            data[p] = [0x00, 0xFF, 0x7F, 0x80, rng.random()][rng.random_range(0..5)];
        }
        3 => {
            let p = pos(rng);
            let width = [1, 2, 4][rng.random_range(0..3)];
            let value = interesting(rng);
            if rng.random_bool(0.5) {
                put_be(data, p, width, value);
            } else {
                put_le(data, p, width, value);
            }
        }
        4 | 5 => {
            let fields = size_fields(data);
            if fields.is_empty() {
                let p = pos(rng);
                put_be(data, p, 4, interesting(rng));
            } else {
                let (p, width, be) = fields[rng.random_range(0..fields.len())];
                let value = interesting(rng);
                if be {
                    put_be(data, p, width, value);
                } else {
                    put_le(data, p, width, value);
                }
            }
        }
        6 => {
            let cut = rng.random_range(0..len);
            data.truncate(cut.max(1));
        }
        7 => {
            // A range duplicated in place (a chunk or segment repeated).
            let a = rng.random_range(0..len);
            let b = (a + rng.random_range(1..=256)).min(len);
            let copy = data[a..b].to_vec();
            let at = rng.random_range(0..=len);
            data.splice(at..at, copy);
        }
        8 => {
            let a = rng.random_range(0..len);
            let b = (a + rng.random_range(1..=64)).min(len);
            data.drain(a..b);
        }
        _ => {
            let at = rng.random_range(0..=len);
            let n = rng.random_range(1..=16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            data.splice(at..at, bytes);
        }
    }
}

/// 1 to 4 mutations of `seed` (one half of the time). `json`: the file holds JSON text (a config, a safetensors
/// header), so numbers in it are a favoured target.
pub fn mutate(seed: &[u8], rng: &mut ChaCha8Rng, json: bool) -> Vec<u8> {
    let mut data = seed.to_vec();
    // One mutation half of the time, up to four otherwise.
    let count = [1, 1, 1, 1, 2, 2, 3, 4][rng.random_range(0..8)];
    for _ in 0..count {
        mutate_once(&mut data, rng, json);
    }
    if data.starts_with(b"\x89PNG") && rng.random_bool(0.75) {
        fix_png_crcs(&mut data);
    }
    data
}

/// Mutates a safetensors file: most often its JSON header (then the 8-byte length in front is
/// rewritten to fit, so that the header is parsed), otherwise the whole file as bytes.
pub fn mutate_safetensors(seed: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let header_len = seed
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize);
    match header_len {
        Some(n) if 8 + n <= seed.len() && rng.random_bool(0.8) => {
            let header = mutate(&seed[8..8 + n], rng, true);
            let mut out = (header.len() as u64).to_le_bytes().to_vec();
            out.extend_from_slice(&header);
            out.extend_from_slice(&seed[8 + n..]);
            out
        }
        _ => mutate(seed, rng, false),
    }
}

/// Mutates a `.pth` zip: most often one entry's content (the pickle, a tensor's bytes, the
/// version), written back into a new archive so that the entry's CRC matches and the mutation
/// reaches the pickle reader instead of stopping at the zip checksum; otherwise the whole file
/// as bytes (the zip reader itself).
pub fn mutate_pth_zip(seed: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    use std::io::{Cursor, Read, Write};
    if !seed.starts_with(b"PK\x03\x04") || rng.random_bool(0.3) {
        return mutate(seed, rng, false);
    }
    let Ok(mut archive) = zip::ZipArchive::new(Cursor::new(seed)) else {
        return mutate(seed, rng, false);
    };
    let mut entries = Vec::new();
    for i in 0..archive.len() {
        let Ok(mut file) = archive.by_index(i) else {
            return mutate(seed, rng, false);
        };
        let Ok(name) = file.name().map(|n| n.into_owned()) else {
            return mutate(seed, rng, false);
        };
        let mut content = Vec::new();
        if file.read_to_end(&mut content).is_err() {
            return mutate(seed, rng, false);
        }
        entries.push((name, content));
    }
    if entries.is_empty() {
        return mutate(seed, rng, false);
    }
    // The pickle half of the time, else any entry.
    let target = match entries.iter().position(|(n, _)| n.ends_with("data.pkl")) {
        Some(p) if rng.random_bool(0.5) => p,
        _ => rng.random_range(0..entries.len()),
    };
    entries[target].1 = mutate(&entries[target].1, rng, false);
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .last_modified_time(zip::DateTime::default());
    let mut out = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (name, content) in &entries {
        out.start_file(name.as_str(), options).expect("zip entry");
        out.write_all(content).expect("zip write");
    }
    out.finish().expect("zip finish").into_inner()
}
