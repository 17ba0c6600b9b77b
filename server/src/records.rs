//! Append-only files of checksummed records, the format of the catalog log and of WAL segments.
//!
//! A record is `[length: u32 LE][crc32 of payload: u32 LE][payload]`. Reading stops at the first
//! record that is cut short or fails its checksum (a write torn by a crash); the file is then cut
//! back to the last whole record so that later appends follow good data.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Read, Write};
use std::path::{Path, PathBuf};

const HEADER: usize = 8;
/// No record is larger than this; a longer length is a torn or corrupt header.
pub const MAX_RECORD: usize = 1 << 30;

/// Appends records to a file.
pub struct RecordWriter {
    file: io::BufWriter<File>,
    path: PathBuf,
    len: u64,
}

impl RecordWriter {
    /// Opens (creating if needed) a file for appending.
    pub fn append_to(path: &Path) -> io::Result<RecordWriter> {
        let existed = path.exists();
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let len = file.metadata()?.len();
        if !existed {
            // The new file's name is durable only once its directory is synced.
            if let Some(dir) = path.parent() {
                File::open(dir)?.sync_all()?;
            }
        }
        Ok(RecordWriter {
            file: io::BufWriter::with_capacity(1 << 20, file),
            path: path.to_path_buf(),
            len,
        })
    }

    pub fn append(&mut self, payload: &[u8]) -> io::Result<()> {
        if payload.len() > MAX_RECORD {
            return Err(io::Error::other(format!(
                "record of {} bytes is larger than the limit of {MAX_RECORD}",
                payload.len()
            )));
        }
        let mut header = [0u8; HEADER];
        header[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        header[4..].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
        self.file.write_all(&header)?;
        self.file.write_all(payload)?;
        self.len += (HEADER + payload.len()) as u64;
        Ok(())
    }

    /// Writes what is buffered and waits until it is on disk.
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.flush()?;
        self.file.get_ref().sync_data()
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// What reading a record file found.
pub struct Records {
    pub payloads: Vec<Vec<u8>>,
    /// Set when the file ended in a torn or corrupt record: what was wrong and where.
    pub torn: Option<String>,
}

/// Reads every whole record of a file; a torn tail is cut off the file and reported.
pub fn read_records(path: &Path) -> io::Result<Records> {
    let mut data = Vec::new();
    File::open(path)?.read_to_end(&mut data)?;
    let mut payloads = Vec::new();
    let mut at = 0usize;
    let mut torn = None;
    while at < data.len() {
        if data.len() - at < HEADER {
            torn = Some(format!(
                "{} bytes of a record header at offset {at}",
                data.len() - at
            ));
            break;
        }
        let len = u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(data[at + 4..at + 8].try_into().expect("4 bytes"));
        let start = at + HEADER;
        if len > MAX_RECORD || data.len() - start < len {
            torn = Some(format!(
                "record at offset {at} is cut short ({} of {len} bytes)",
                data.len() - start
            ));
            break;
        }
        let payload = &data[start..start + len];
        if crc32fast::hash(payload) != crc {
            torn = Some(format!("record at offset {at} fails its checksum"));
            break;
        }
        payloads.push(payload.to_vec());
        at = start + len;
    }
    if torn.is_some() {
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(at as u64)?;
        f.sync_all()?;
    }
    Ok(Records { payloads, torn })
}

/// Walks the whole records of a file that may be being appended to, without changing it: for
/// each, its offset, payload length and up to `prefix` first bytes of its payload. Stops at the
/// first record that is not whole (yet). Checksums are checked by [`read_at`].
pub fn scan(path: &Path, prefix: usize, mut each: impl FnMut(u64, u32, &[u8])) -> io::Result<()> {
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    let mut r = io::BufReader::with_capacity(64 << 10, file);
    let mut at = 0u64;
    let mut head = [0u8; HEADER];
    let mut buf = vec![0u8; prefix];
    while at + HEADER as u64 <= size {
        r.read_exact(&mut head)?;
        let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
        if len as usize > MAX_RECORD || at + (HEADER as u64) + u64::from(len) > size {
            break;
        }
        let n = prefix.min(len as usize);
        r.read_exact(&mut buf[..n])?;
        each(at, len, &buf[..n]);
        let skip = len as usize - n;
        if skip <= r.buffer().len() {
            r.consume(skip);
        } else {
            r.seek_relative(skip as i64)?;
        }
        at += HEADER as u64 + u64::from(len);
    }
    Ok(())
}

/// Reads the record at `offset` (as [`scan`] found it) and checks its checksum.
pub fn read_at(path: &Path, offset: u64, len: u32) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let file = File::open(path)?;
    let mut data = vec![0u8; HEADER + len as usize];
    file.read_exact_at(&mut data, offset)?;
    let stored = u32::from_le_bytes(data[..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(data[4..8].try_into().expect("4 bytes"));
    if stored != len || crc32fast::hash(&data[HEADER..]) != crc {
        return Err(io::Error::other(format!(
            "{}: the record at offset {offset} fails its checksum",
            path.display()
        )));
    }
    data.drain(..HEADER);
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torn_tails_are_cut_off_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut w = RecordWriter::append_to(&path).unwrap();
        w.append(b"one").unwrap();
        w.append(b"two").unwrap();
        w.sync().unwrap();
        let whole = std::fs::metadata(&path).unwrap().len();
        // A third record cut short by a crash.
        w.append(b"three").unwrap();
        w.sync().unwrap();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(whole + 10).unwrap();
        let r = read_records(&path).unwrap();
        assert_eq!(r.payloads, vec![b"one".to_vec(), b"two".to_vec()]);
        assert!(r.torn.unwrap().contains("cut short"));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), whole);
        // Appends continue after the good records.
        let mut w = RecordWriter::append_to(&path).unwrap();
        w.append(b"four").unwrap();
        w.sync().unwrap();
        let r = read_records(&path).unwrap();
        assert_eq!(r.payloads.len(), 3);
        assert!(r.torn.is_none());
        // A flipped byte fails the checksum.
        let mut data = std::fs::read(&path).unwrap();
        let last = data.len() - 1;
        data[last] ^= 0xff;
        std::fs::write(&path, &data).unwrap();
        let r = read_records(&path).unwrap();
        assert_eq!(r.payloads.len(), 2);
        assert!(r.torn.unwrap().contains("checksum"));
    }
}
