//! Motion-JPEG frames as cameras send them.
//!
//! A UVC camera in MJPEG mode sends one JPEG per frame, often without a DHT (Define Huffman
//! Table) segment: the AVI/MJPEG convention is that a frame without one uses the example tables
//! of the JPEG standard (ITU-T T.81, Annex K.3, tables K.3 to K.6). Browsers and most decoders do
//! not fill them in, so [`with_huffman_tables`] inserts them, making each frame a complete JPEG
//! file that can be decoded, streamed and saved as it is (what ffmpeg's `mjpeg2jpeg` filter and
//! mjpg-streamer do).

use std::borrow::Cow;

/// Table K.3: luminance DC code lengths (count of codes of length 1..=16).
const DC_LUMA_BITS: [u8; 16] = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0];
/// Table K.4: chrominance DC code lengths.
const DC_CHROMA_BITS: [u8; 16] = [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0];
/// DC symbols (categories 0..=11), the same for both DC tables.
const DC_VALUES: [u8; 12] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
/// Table K.5: luminance AC code lengths.
const AC_LUMA_BITS: [u8; 16] = [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7d];
/// Table K.5: luminance AC symbols.
#[rustfmt::skip]
const AC_LUMA_VALUES: [u8; 162] = [
    0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61, 0x07,
    0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xA1, 0x08, 0x23, 0x42, 0xB1, 0xC1, 0x15, 0x52, 0xD1, 0xF0,
    0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0A, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x25, 0x26, 0x27, 0x28,
    0x29, 0x2A, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49,
    0x4A, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69,
    0x6A, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7A, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89,
    0x8A, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7,
    0xA8, 0xA9, 0xAA, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6, 0xB7, 0xB8, 0xB9, 0xBA, 0xC2, 0xC3, 0xC4, 0xC5,
    0xC6, 0xC7, 0xC8, 0xC9, 0xCA, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9, 0xDA, 0xE1, 0xE2,
    0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8, 0xE9, 0xEA, 0xF1, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8,
    0xF9, 0xFA,
];
/// Table K.6: chrominance AC code lengths.
const AC_CHROMA_BITS: [u8; 16] = [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77];
/// Table K.6: chrominance AC symbols.
#[rustfmt::skip]
const AC_CHROMA_VALUES: [u8; 162] = [
    0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61, 0x71,
    0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xA1, 0xB1, 0xC1, 0x09, 0x23, 0x33, 0x52, 0xF0,
    0x15, 0x62, 0x72, 0xD1, 0x0A, 0x16, 0x24, 0x34, 0xE1, 0x25, 0xF1, 0x17, 0x18, 0x19, 0x1A, 0x26,
    0x27, 0x28, 0x29, 0x2A, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48,
    0x49, 0x4A, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68,
    0x69, 0x6A, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7A, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87,
    0x88, 0x89, 0x8A, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0xA2, 0xA3, 0xA4, 0xA5,
    0xA6, 0xA7, 0xA8, 0xA9, 0xAA, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6, 0xB7, 0xB8, 0xB9, 0xBA, 0xC2, 0xC3,
    0xC4, 0xC5, 0xC6, 0xC7, 0xC8, 0xC9, 0xCA, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9, 0xDA,
    0xE2, 0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8, 0xE9, 0xEA, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8,
    0xF9, 0xFA,
];

/// The DHT segment holding the four tables (DC 0, AC 0, DC 1, AC 1), marker included.
fn default_dht_segment() -> Vec<u8> {
    let tables: [(u8, &[u8; 16], &[u8]); 4] = [
        (0x00, &DC_LUMA_BITS, &DC_VALUES),
        (0x10, &AC_LUMA_BITS, &AC_LUMA_VALUES),
        (0x01, &DC_CHROMA_BITS, &DC_VALUES),
        (0x11, &AC_CHROMA_BITS, &AC_CHROMA_VALUES),
    ];
    let mut body = Vec::with_capacity(420);
    for (class_id, bits, values) in tables {
        body.push(class_id);
        body.extend_from_slice(bits);
        body.extend_from_slice(values);
    }
    let len = (body.len() + 2) as u16;
    let mut seg = vec![0xFF, 0xC4];
    seg.extend_from_slice(&len.to_be_bytes());
    seg.extend_from_slice(&body);
    seg
}

/// True when `bytes` look like one whole JPEG: it starts with SOI (`FF D8`) and, after any zero
/// padding (UVC payloads are often padded), ends with EOI (`FF D9`). A frame cut short in
/// transfer fails this check. It does not decode anything.
pub fn is_complete(bytes: &[u8]) -> bool {
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    end >= 4 && bytes.starts_with(&[0xFF, 0xD8]) && bytes[..end].ends_with(&[0xFF, 0xD9])
}

/// `bytes` with the standard Huffman tables inserted before the first scan when the JPEG has
/// none (borrowed unchanged when it has its own, or when its markers cannot be walked, in which
/// case the decoder will judge it). Trailing zero padding after EOI is removed.
pub fn with_huffman_tables(bytes: &[u8]) -> Cow<'_, [u8]> {
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let bytes = &bytes[..end];
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return Cow::Borrowed(bytes);
    }
    let mut i = 2;
    while i + 1 < bytes.len() {
        if bytes[i] != 0xFF {
            return Cow::Borrowed(bytes);
        }
        let marker = bytes[i + 1];
        match marker {
            // Fill bytes before a marker.
            0xFF => i += 1,
            // Standalone markers (TEM, RSTn) have no length.
            0x01 | 0xD0..=0xD7 => i += 2,
            0xC4 => return Cow::Borrowed(bytes),
            0xDA => {
                let dht = default_dht_segment();
                let mut out = Vec::with_capacity(bytes.len() + dht.len());
                out.extend_from_slice(&bytes[..i]);
                out.extend_from_slice(&dht);
                out.extend_from_slice(&bytes[i..]);
                return Cow::Owned(out);
            }
            _ => {
                let Some(len) = bytes.get(i + 2..i + 4) else {
                    return Cow::Borrowed(bytes);
                };
                i += 2 + u16::from_be_bytes([len[0], len[1]]) as usize;
            }
        }
    }
    Cow::Borrowed(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dht_segment_has_the_length_t81_gives() {
        let seg = default_dht_segment();
        // 2 (length field) + 4 x (1 + 16) + 12 + 162 + 12 + 162 = 418 = 0x01A2.
        assert_eq!(&seg[..4], &[0xFF, 0xC4, 0x01, 0xA2]);
        assert_eq!(seg.len(), 2 + 418);
        // Each table's counts add up to its number of symbols.
        let sum = |b: &[u8; 16]| b.iter().map(|&x| x as usize).sum::<usize>();
        assert_eq!(sum(&DC_LUMA_BITS), 12);
        assert_eq!(sum(&DC_CHROMA_BITS), 12);
        assert_eq!(sum(&AC_LUMA_BITS), 162);
        assert_eq!(sum(&AC_CHROMA_BITS), 162);
    }

    /// A real JPEG with its DHT segments cut out decodes again once the standard tables are put
    /// back, to the same pixels (libjpeg-style encoders, like `image`'s, use exactly these
    /// tables).
    #[test]
    fn a_jpeg_stripped_of_its_tables_decodes_after_insertion() {
        let img = image::RgbImage::from_fn(64, 48, |x, y| {
            image::Rgb([(x * 4) as u8, (y * 5) as u8, ((x + y) * 2) as u8])
        });
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
            .encode_image(&img)
            .unwrap();
        let stripped = strip_dht(&jpeg);
        assert!(stripped.len() < jpeg.len());
        assert!(is_complete(&stripped));
        let fixed = with_huffman_tables(&stripped);
        assert!(matches!(fixed, Cow::Owned(_)));
        let path = std::path::Path::new("frame.jpg");
        let opts = crate::data::decode::DecodeOptions::default();
        let a = crate::data::decode::decode_bytes(&jpeg, path, &opts).unwrap();
        let b = crate::data::decode::decode_bytes(&fixed, path, &opts).unwrap();
        assert_eq!(a, b);
        // A JPEG with tables is left alone.
        assert!(matches!(with_huffman_tables(&jpeg), Cow::Borrowed(_)));
    }

    #[test]
    fn completeness_needs_soi_and_eoi() {
        assert!(is_complete(&[0xFF, 0xD8, 0x00, 0xFF, 0xD9, 0, 0, 0]));
        assert!(!is_complete(&[0xFF, 0xD8, 0x12, 0x34, 0x56]));
        assert!(!is_complete(&[]));
        assert!(!is_complete(&[0, 0, 0, 0]));
    }

    /// Removes every DHT segment.
    pub(crate) fn strip_dht(jpeg: &[u8]) -> Vec<u8> {
        let mut out = jpeg[..2].to_vec();
        let mut i = 2;
        loop {
            let marker = jpeg[i + 1];
            if marker == 0xDA {
                out.extend_from_slice(&jpeg[i..]);
                return out;
            }
            let len = u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]) as usize;
            if marker != 0xC4 {
                out.extend_from_slice(&jpeg[i..i + 2 + len]);
            }
            i += 2 + len;
        }
    }
}
