//! Message bodies compressed by kombu (`apply_async(compression=...)`):
//! the body is compressed and the `compression` header names the method by
//! kombu's content type (`application/x-gzip` for zlib, `application/x-bz2`,
//! `application/x-lzma`) or one of its aliases.
//!
//! Decompression stops at a size cap: a few kilobytes can inflate to
//! gigabytes, and a worker must not be taken down by one message.

use std::io::{self, Read, Write};

/// The most a task message's body may decompress to. The API's own task
/// messages are a few hundred bytes, and a Python producer's email with its
/// content is bounded by `EMAIL_MAX_SIZE` (10 MiB by default) well below this.
pub const MAX_DECOMPRESSED: usize = 32 << 20;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CompressionError {
    #[error(
        "unsupported compression {0:?}: zlib/gzip (application/x-gzip), bzip2 \
         (application/x-bz2) and lzma/xz (application/x-lzma) are accepted"
    )]
    Unsupported(String),
    #[error("corrupt {method} body: {reason}")]
    Corrupt {
        method: &'static str,
        reason: String,
    },
    #[error("{method} body decompresses to more than {limit} bytes")]
    TooLarge { method: &'static str, limit: usize },
}

/// A compression method kombu registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Zlib,
    Bzip2,
    Lzma,
}

impl Method {
    /// kombu's content type or alias (`kombu.compression.get_decoder`).
    fn named(name: &str) -> Option<Method> {
        match name.trim().to_ascii_lowercase().as_str() {
            "application/x-gzip" | "gzip" | "zlib" => Some(Method::Zlib),
            "application/x-bz2" | "bzip2" | "bzip" => Some(Method::Bzip2),
            "application/x-lzma" | "lzma" | "xz" => Some(Method::Lzma),
            _ => None,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Method::Zlib => "zlib",
            Method::Bzip2 => "bzip2",
            Method::Lzma => "lzma",
        }
    }
}

/// The body a `compression` header of `name` describes, decompressed to at
/// most `limit` bytes.
pub fn decompress(name: &str, body: &[u8], limit: usize) -> Result<Vec<u8>, CompressionError> {
    let method = Method::named(name).ok_or_else(|| CompressionError::Unsupported(name.into()))?;
    let decoded = match method {
        // kombu's "gzip" is zlib's format too; a true gzip stream (its
        // magic number) is read as such all the same.
        Method::Zlib if body.starts_with(&[0x1f, 0x8b]) => {
            read_capped(flate2::read::MultiGzDecoder::new(body), limit)
        }
        Method::Zlib => read_capped(flate2::read::ZlibDecoder::new(body), limit),
        // Python's bz2.decompress reads concatenated streams.
        Method::Bzip2 => read_capped(bzip2::read::MultiBzDecoder::new(body), limit),
        Method::Lzma => {
            let mut out = Capped::new(limit);
            let mut input = io::BufReader::new(body);
            // lzma.decompress's FORMAT_AUTO: xz (what lzma.compress
            // writes), or the legacy .lzma format.
            let decoded = if body.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
                lzma_rs::xz_decompress(&mut input, &mut out)
            } else {
                lzma_rs::lzma_decompress(&mut input, &mut out)
            };
            match decoded {
                _ if out.exceeded => Err(ReadError::TooLarge),
                Ok(()) => Ok(out.bytes),
                Err(e) => Err(ReadError::Corrupt(e.to_string())),
            }
        }
    };
    decoded.map_err(|e| match e {
        ReadError::TooLarge => CompressionError::TooLarge {
            method: method.label(),
            limit,
        },
        ReadError::Corrupt(reason) => CompressionError::Corrupt {
            method: method.label(),
            reason,
        },
    })
}

enum ReadError {
    TooLarge,
    Corrupt(String),
}

/// Reads a decoder to its end, refusing more than `limit` bytes.
fn read_capped(reader: impl Read, limit: usize) -> Result<Vec<u8>, ReadError> {
    let mut out = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| ReadError::Corrupt(e.to_string()))?;
    if out.len() > limit {
        return Err(ReadError::TooLarge);
    }
    Ok(out)
}

/// A sink that refuses to grow past its limit (lzma-rs writes its output).
struct Capped {
    bytes: Vec<u8>,
    limit: usize,
    exceeded: bool,
}

impl Capped {
    fn new(limit: usize) -> Self {
        Capped {
            bytes: Vec::new(),
            limit,
            exceeded: false,
        }
    }
}

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.bytes.len() + buf.len() > self.limit {
            self.exceeded = true;
            return Err(io::Error::other("decompressed size limit reached"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &[u8] = br#"[[], {"to": "a@b.c", "subject": "compressed"}, null]"#;

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn bzip2(data: &[u8]) -> Vec<u8> {
        let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        lzma_rs::xz_compress(&mut io::BufReader::new(data), &mut out).unwrap();
        out
    }

    #[test]
    fn kombu_methods_and_aliases_decompress() {
        for (name, body) in [
            ("application/x-gzip", zlib(TEXT)),
            ("zlib", zlib(TEXT)),
            ("gzip", zlib(TEXT)),
            ("application/x-bz2", bzip2(TEXT)),
            ("bzip2", bzip2(TEXT)),
            ("application/x-lzma", xz(TEXT)),
            ("xz", xz(TEXT)),
        ] {
            assert_eq!(
                decompress(name, &body, MAX_DECOMPRESSED).as_deref(),
                Ok(TEXT),
                "{name}"
            );
        }
    }

    #[test]
    fn unknown_methods_and_corrupt_bodies_are_refused() {
        assert_eq!(
            decompress("application/zstd", TEXT, MAX_DECOMPRESSED),
            Err(CompressionError::Unsupported("application/zstd".into()))
        );
        for name in ["zlib", "bzip2", "lzma"] {
            assert!(
                matches!(
                    decompress(name, b"not compressed at all", MAX_DECOMPRESSED),
                    Err(CompressionError::Corrupt { .. })
                ),
                "{name}"
            );
        }
    }

    #[test]
    fn a_compression_bomb_stops_at_the_cap() {
        let huge = vec![b' '; 4 << 20];
        for (name, body) in [
            ("zlib", zlib(&huge)),
            ("bzip2", bzip2(&huge)),
            ("lzma", xz(&huge)),
        ] {
            // (lzma-rs's encoder stores rather than compresses: no bomb.)
            if name != "lzma" {
                assert!(body.len() < 64 << 10, "{name}: {}", body.len());
            }
            assert!(
                matches!(
                    decompress(name, &body, 1 << 20),
                    Err(CompressionError::TooLarge { .. })
                ),
                "{name}"
            );
            assert_eq!(decompress(name, &body, 4 << 20).unwrap().len(), 4 << 20);
        }
    }
}
