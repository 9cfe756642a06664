//! Weights file formats, told apart by their first bytes.

use super::*;

/// How a weights file is serialized, as told by its first bytes (see [`detect_format`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightsFormat {
    /// `torch.save` zip container (the default since torch 1.6): a zip archive holding
    /// `<name>/data.pkl` and one record per tensor storage. Starts with `PK\x03\x04`.
    TorchZip,
    /// Legacy `torch.save` stream (`_use_new_zipfile_serialization=False`, or torch < 1.6):
    /// consecutive pickles, the first being torch's magic number. Starts with the pickle
    /// PROTO opcode `0x80` and the protocol number (2 for torch's default).
    TorchLegacy,
    /// safetensors: an 8-byte little-endian header length `n`, then `n` bytes of JSON header
    /// starting with `{`, then the raw tensor bytes.
    Safetensors,
}

impl WeightsFormat {
    /// A short lowercase name: `torch-zip`, `torch-legacy` or `safetensors`.
    pub fn as_str(self) -> &'static str {
        match self {
            WeightsFormat::TorchZip => "torch-zip",
            WeightsFormat::TorchLegacy => "torch-legacy",
            WeightsFormat::Safetensors => "safetensors",
        }
    }
}

impl fmt::Display for WeightsFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Tells the serialization of a weights file from its first 9 bytes.
///
/// - `PK\x03\x04` (zip local file header): [`WeightsFormat::TorchZip`];
/// - `0x80 p` with pickle protocol `p` in 2..=5: [`WeightsFormat::TorchLegacy`];
/// - 8-byte little-endian `n` with `8 + n <= file size`, then `{`: [`WeightsFormat::Safetensors`].
///
/// Only the magic bytes are checked: a file that passes may still fail to load.
///
/// # Errors
/// [`Error::Io`] when the file cannot be read; [`Error::Weights`] naming the file when it is
/// shorter than 9 bytes or starts with none of the above. The message shows the first bytes
/// and recognises the usual wrong downloads (an HTML error page, a Git LFS pointer, a gzip
/// or tar archive).
pub fn detect_format(path: &Path) -> Result<WeightsFormat> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut head = [0u8; 64];
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(path, e)),
        }
    }
    let head = &head[..filled];
    format_from_head(head, len).ok_or_else(|| Error::Weights {
        path: path.to_path_buf(),
        reason: unknown_format_reason(head, len),
    })
}

/// The format told by `head` (the file's first bytes, at least 9 to recognise anything) for a
/// file of `len` bytes.
pub(super) fn format_from_head(head: &[u8], len: u64) -> Option<WeightsFormat> {
    if head.len() < 9 {
        return None;
    }
    if head.starts_with(b"PK\x03\x04") {
        return Some(WeightsFormat::TorchZip);
    }
    if head[0] == 0x80 && (2..=5).contains(&head[1]) {
        return Some(WeightsFormat::TorchLegacy);
    }
    let mut n = [0u8; 8];
    n.copy_from_slice(&head[..8]);
    let header_len = u64::from_le_bytes(n);
    if head[8] == b'{' && header_len >= 2 && header_len <= len.saturating_sub(8) {
        return Some(WeightsFormat::Safetensors);
    }
    None
}

/// Why `head` is not a weights file, for the error message.
pub(super) fn unknown_format_reason(head: &[u8], len: u64) -> String {
    if len < 9 {
        return format!("{len} bytes is too short for a weights file");
    }
    let text = String::from_utf8_lossy(head).to_ascii_lowercase();
    let text = text.trim_start();
    let hint = if text.starts_with('<') {
        " (this looks like an HTML page, e.g. an error page saved in place of the weights)"
    } else if text.starts_with("version https://git-lfs") {
        " (this is a Git LFS pointer, not the file: fetch it with `git lfs pull`)"
    } else if head.starts_with(&[0x1f, 0x8b]) {
        " (this is gzip-compressed: decompress it first)"
    } else if head.len() >= 8 && text.contains("ustar") {
        " (this looks like a tar archive: extract the weights file first)"
    } else {
        ""
    };
    let shown: Vec<String> = head.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!(
        "not a torch zip, legacy torch pickle or safetensors file: it starts with [{}]{hint}",
        shown.join(" ")
    )
}
