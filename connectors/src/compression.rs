//! Request bodies compressed with `Content-Encoding` (and scraped responses): gzip, deflate,
//! zstd and snappy (the block format remote write uses), decompressed up to a limit. A body
//! that expands past the limit is refused after at most the limit has been produced, so a
//! small bomb cannot take the memory.

use std::io::Read;

use bytes::Bytes;

/// Why a body could not be decompressed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecompressError {
    /// It expands past the limit (bytes).
    #[error("the body decompresses to more than the limit of {0} bytes (--max-body)")]
    TooLarge(usize),
    #[error("unsupported Content-Encoding '{0}': use gzip, deflate, zstd or snappy")]
    Unsupported(String),
    #[error("the body is not valid {0}: {1}")]
    Corrupt(&'static str, String),
}

/// Reads a decoder to its end, or until it produced more than `limit` bytes; `expected` is
/// how much it is likely to produce, so that the output need not grow by copying as it goes.
fn bounded(
    mut r: impl Read,
    limit: usize,
    expected: usize,
    what: &'static str,
) -> Result<Bytes, DecompressError> {
    let mut out = Vec::with_capacity(expected.min(limit) + 1);
    let n = (&mut r)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| DecompressError::Corrupt(what, e.to_string()))?;
    if n > limit {
        return Err(DecompressError::TooLarge(limit));
    }
    Ok(Bytes::from(out))
}

/// Decompresses `body` as `encoding` says (a `Content-Encoding` value; empty or `identity`
/// leaves it as it is), producing at most `limit` bytes.
pub fn decompress(encoding: &str, body: Bytes, limit: usize) -> Result<Bytes, DecompressError> {
    let encoding = encoding.trim().to_ascii_lowercase();
    match encoding.as_str() {
        "" | "identity" => {
            if body.len() > limit {
                return Err(DecompressError::TooLarge(limit));
            }
            Ok(body)
        }
        "gzip" | "x-gzip" => {
            // A gzip member ends with its uncompressed size (modulo 2^32): exact for one
            // member, only a hint for a body that lies, so it is capped by the limit and by
            // deflate's largest ratio (1032:1).
            let size = body.len().checked_sub(4).map_or(0, |at| {
                u32::from_le_bytes(body[at..].try_into().expect("4 bytes"))
            });
            let hint = (size as usize).min(body.len().saturating_mul(1032));
            let d = flate2::read::MultiGzDecoder::new(&body[..]);
            bounded(d, limit, hint, "gzip")
        }
        "deflate" => {
            let d = flate2::read::ZlibDecoder::new(&body[..]);
            bounded(d, limit, body.len().saturating_mul(4), "deflate")
        }
        "zstd" => {
            let d = zstd::stream::read::Decoder::with_buffer(&body[..])
                .map_err(|e| DecompressError::Corrupt("zstd", e.to_string()))?;
            bounded(d, limit, body.len().saturating_mul(4), "zstd")
        }
        "snappy" => {
            let len = snap::raw::decompress_len(&body)
                .map_err(|e| DecompressError::Corrupt("snappy", e.to_string()))?;
            if len > limit {
                return Err(DecompressError::TooLarge(limit));
            }
            snap::raw::Decoder::new()
                .decompress_vec(&body)
                .map(Bytes::from)
                .map_err(|e| DecompressError::Corrupt("snappy", e.to_string()))
        }
        other => Err(DecompressError::Unsupported(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn each_encoding_round_trips() {
        let data = b"cpu,host=a usage=1.5 1\n".repeat(100);
        let z = zstd::stream::encode_all(&data[..], 3).unwrap();
        let s = snap::raw::Encoder::new().compress_vec(&data).unwrap();
        let mut d = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        d.write_all(&data).unwrap();
        let d = d.finish().unwrap();
        for (enc, body) in [
            ("gzip", gzip(&data)),
            ("zstd", z),
            ("snappy", s),
            ("deflate", d),
            ("", data.clone()),
            ("Identity", data.clone()),
        ] {
            let out = decompress(enc, Bytes::from(body), 1 << 20).unwrap();
            assert_eq!(&out[..], &data[..], "{enc}");
        }
    }

    /// The size a gzip body ends with only sizes the buffer: several members (whose last says
    /// less than the whole) and a trailer that lies are read as they are.
    #[test]
    fn the_gzip_trailer_is_only_a_hint() {
        let big = b"a long first member ".repeat(5000);
        let mut two = gzip(&big);
        two.extend(gzip(b"short"));
        let out = decompress("gzip", Bytes::from(two), 1 << 20).unwrap();
        assert_eq!(out.len(), big.len() + 5);
        let mut lying = gzip(b"tiny");
        let n = lying.len();
        lying[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
        let e = decompress("gzip", Bytes::from(lying), 1 << 20).unwrap_err();
        assert!(matches!(e, DecompressError::Corrupt("gzip", _)), "{e:?}");
    }

    #[test]
    fn a_bomb_is_refused_at_the_limit() {
        // 64 MB of zeros compress to about 64 KB.
        let zeros = vec![0u8; 64 << 20];
        for (enc, body) in [
            ("gzip", gzip(&zeros)),
            ("zstd", zstd::stream::encode_all(&zeros[..], 3).unwrap()),
            (
                "snappy",
                snap::raw::Encoder::new().compress_vec(&zeros).unwrap(),
            ),
        ] {
            assert!(body.len() < 4 << 20, "{enc}: {}", body.len());
            let e = decompress(enc, Bytes::from(body), 1 << 20).unwrap_err();
            assert_eq!(e, DecompressError::TooLarge(1 << 20), "{enc}");
        }
    }

    #[test]
    fn corrupt_and_unknown_bodies_say_why() {
        let e = decompress("snappy", Bytes::from_static(b"\x0a\xff\xff\xff"), 1 << 20).unwrap_err();
        assert!(matches!(e, DecompressError::Corrupt("snappy", _)), "{e}");
        let e = decompress("gzip", Bytes::from_static(b"plain"), 1 << 20).unwrap_err();
        assert!(matches!(e, DecompressError::Corrupt("gzip", _)), "{e}");
        let e = decompress("br", Bytes::from_static(b"x"), 1 << 20).unwrap_err();
        assert!(
            e.to_string().contains("use gzip, deflate, zstd or snappy"),
            "{e}"
        );
    }
}
