//! The inbox directory on disk: which names are candidates, when a file is
//! complete (two equal looks), claiming it into `processing/`, free names in
//! `processed/` and `rejected/`, durable renames and atomic writes, and the
//! file's digest. Blocking file I/O only; nothing here knows about events.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

/// Most directory entries one scan looks at; the rest wait for a later scan
/// (bounds the settling map and the time of one scan).
pub const SCAN_ENTRIES_MAX: usize = 100_000;

/// Most `name.N.ext` candidates tried for a free name.
const FREE_NAME_TRIES_MAX: u32 = 100_000;

/// Bytes at the start of a file searched for a NUL (a binary file is not CSV).
const BINARY_SNIFF_BYTES: usize = 64 * 1024;

/// Suffixes of files still being written (write-then-rename conventions of
/// common transfer tools), compared case-insensitively.
const PARTIAL_SUFFIXES: &[&str] = &[".tmp", ".part", ".partial", ".filepart", ".crdownload"];

/// Suffix of the result file written next to a processed or rejected file.
pub const RESULT_SUFFIX: &str = ".result.json";

/// The four directories of one inbox.
#[derive(Debug, Clone)]
pub struct Dirs {
    /// Where partners drop files.
    pub incoming: PathBuf,
    /// Files claimed and being read (at most one at a time per inbox).
    pub processing: PathBuf,
    pub processed: PathBuf,
    pub rejected: PathBuf,
}

impl Dirs {
    /// The inbox's directories, created when missing.
    pub fn create(dir: &Path) -> io::Result<Dirs> {
        let dirs = Dirs {
            incoming: dir.to_path_buf(),
            processing: dir.join("processing"),
            processed: dir.join("processed"),
            rejected: dir.join("rejected"),
        };
        for path in [
            &dirs.incoming,
            &dirs.processing,
            &dirs.processed,
            &dirs.rejected,
        ] {
            fs::create_dir_all(path)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        }
        Ok(dirs)
    }
}

/// True for names that are never read: dotfiles and files still being
/// written by a write-then-rename transfer (`*.tmp`, `*.part`, ...).
pub fn is_ignored(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    name.starts_with('.') || PARTIAL_SUFFIXES.iter().any(|s| lower.ends_with(s))
}

/// What one look at a file saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Look {
    size: u64,
    modified: Option<SystemTime>,
}

impl Look {
    fn of(metadata: &fs::Metadata) -> Look {
        Look {
            size: metadata.len(),
            modified: metadata.modified().ok(),
        }
    }
}

/// A file in the incoming directory that two looks found unchanged.
#[derive(Debug, Clone)]
pub struct Ready {
    pub name: OsString,
    modified: Option<SystemTime>,
}

/// Files seen in the incoming directory and their first unchanged look: a file
/// is ready when a later look, at least `stable` after that one, sees the same
/// size and modification time.
#[derive(Default)]
pub struct Settling {
    seen: HashMap<OsString, (Look, Instant)>,
}

/// What one scan found.
pub struct Scan {
    /// Complete files, oldest first (then by name).
    pub ready: Vec<Ready>,
    /// Candidates still changing or not yet looked at twice.
    pub settling: usize,
}

impl Settling {
    pub fn scan(&mut self, dir: &Path, stable: Duration) -> io::Result<Scan> {
        let now = Instant::now();
        let mut present: HashMap<OsString, (Look, Instant)> = HashMap::new();
        let mut ready = Vec::new();
        for entry in fs::read_dir(dir)?.take(SCAN_ENTRIES_MAX) {
            let entry = entry?;
            let name = entry.file_name();
            // A name that is not UTF-8 is still a file a partner sent: it is a
            // candidate (rejected whole for its name) rather than left behind.
            if name.to_str().is_some_and(is_ignored) {
                continue;
            }
            let Ok(metadata) = fs::symlink_metadata(entry.path()) else {
                continue; // gone since the listing
            };
            if !metadata.is_file() {
                continue; // our subdirectories, symlinks, sockets
            }
            let look = Look::of(&metadata);
            // Since when this look has held; a first look, or a change, starts over.
            let (since, looked_before) = match self.seen.get(&name) {
                Some((earlier, since)) if *earlier == look => (*since, true),
                _ => (now, false),
            };
            if looked_before && now.duration_since(since) >= stable {
                ready.push(Ready {
                    name: name.clone(),
                    modified: look.modified,
                });
            }
            present.insert(name, (look, since));
        }
        let settling = present.len() - ready.len();
        self.seen = present;
        ready.sort_by(|a, b| a.modified.cmp(&b.modified).then(a.name.cmp(&b.name)));
        Ok(Scan { ready, settling })
    }

    /// Forgets a file (claimed, or to be looked at afresh).
    pub fn forget(&mut self, name: &OsString) {
        self.seen.remove(name);
    }
}

/// Moves `incoming/name` to `processing/name`; false when a file of that name
/// is already being processed (it waits for the next scan).
pub fn claim(dirs: &Dirs, name: &OsString) -> io::Result<bool> {
    let target = dirs.processing.join(name);
    if target.exists() {
        return Ok(false);
    }
    rename_durably(&dirs.incoming.join(name), &target)?;
    Ok(true)
}

/// Files left in `processing/` (by a restart), by name.
pub fn in_processing(dirs: &Dirs) -> io::Result<Vec<OsString>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(&dirs.processing)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_str().is_some_and(|n| n.starts_with('.')) {
            continue; // our own partial files
        }
        if entry.file_type()?.is_file() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// `name` when neither it nor its result file exists in `dir`, else the first
/// free `stem.N.ext` (N from 2): a partner reusing a file name never
/// overwrites an earlier file.
pub fn free_name(dir: &Path, name: &str) -> io::Result<String> {
    let taken = |candidate: &str| {
        dir.join(candidate).exists() || dir.join(format!("{candidate}{RESULT_SUFFIX}")).exists()
    };
    if !taken(name) {
        return Ok(name.to_string());
    }
    let (stem, extension) = match name.rfind('.') {
        Some(dot) if dot > 0 => (&name[..dot], &name[dot..]),
        _ => (name, ""),
    };
    for n in 2..FREE_NAME_TRIES_MAX {
        let candidate = format!("{stem}.{n}{extension}");
        if !taken(&candidate) {
            return Ok(candidate);
        }
    }
    Err(io::Error::other(format!(
        "no free name for {name} in {}",
        dir.display()
    )))
}

/// fsyncs a directory, so a rename or a new entry in it survives power loss.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Renames within one file system and syncs both directories.
pub fn rename_durably(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to)?;
    if let Some(parent) = to.parent() {
        sync_dir(parent)?;
    }
    if let Some(parent) = from.parent() {
        if Some(parent) != to.parent() {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically: a dot-named temporary file in the same
/// directory, fsynced, then renamed over `path`.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("a result file needs a directory"))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("a result file needs a name"))?;
    let mut temporary = OsString::from(".");
    temporary.push(name);
    temporary.push(".tmp");
    let temporary = dir.join(temporary);
    {
        let mut file = File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    fs::rename(&temporary, path)?;
    sync_dir(dir)
}

/// What reading a whole file once found.
pub struct Fingerprint {
    /// SHA-256 over the inbox's source, the file name and the content.
    pub digest: [u8; 32],
    pub size: u64,
    /// A NUL byte near the start: a binary file, not CSV.
    pub binary: bool,
}

/// Reads the file once: its digest (over `source`, `name` and the content, so
/// the same file dropped again has the same digest while a different file
/// under a reused name does not) and whether it looks binary. `keep_going` is
/// asked between blocks; false stops the read (shutdown).
pub fn fingerprint(
    path: &Path,
    source: &str,
    name: &[u8],
    keep_going: &mut dyn FnMut() -> bool,
) -> io::Result<Option<Fingerprint>> {
    let mut hasher = Sha256::new();
    hasher.update(b"stockwire-inbox-v1\0");
    hasher.update(source.as_bytes());
    hasher.update([0]);
    hasher.update(name);
    hasher.update([0]);
    let mut file = open_regular(path)?;
    let mut buffer = vec![0u8; 1 << 20];
    let mut size = 0u64;
    let mut binary = false;
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        let block = &buffer[..read];
        if (size as usize) < BINARY_SNIFF_BYTES {
            let sniff = (BINARY_SNIFF_BYTES - size as usize).min(read);
            binary |= block[..sniff].contains(&0);
        }
        hasher.update(block);
        size += read as u64;
        if !keep_going() {
            return Ok(None);
        }
    }
    Ok(Some(Fingerprint {
        digest: hasher.finalize().into(),
        size,
        binary,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignored_names() {
        for name in [
            ".hidden.csv",
            "stock.csv.part",
            "stock.csv.TMP",
            "x.partial",
            "x.filepart",
        ] {
            assert!(is_ignored(name), "{name}");
        }
        for name in ["stock.csv", "stock", "part.csv", "tmp-file.csv"] {
            assert!(!is_ignored(name), "{name}");
        }
    }

    #[test]
    fn a_file_is_ready_after_two_equal_looks() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("a.csv");
        fs::write(&path, "sku\n").expect("write");
        fs::write(dir.path().join("b.csv.part"), "x").expect("write");
        fs::create_dir(dir.path().join("processed")).expect("dir");
        let mut settling = Settling::default();
        let stable = Duration::from_millis(30);
        let first = settling.scan(dir.path(), stable).expect("scan");
        assert!(first.ready.is_empty());
        assert_eq!(first.settling, 1);
        std::thread::sleep(Duration::from_millis(40));
        // It grew since: the clock starts again.
        fs::write(&path, "sku,location\n").expect("write");
        assert!(settling
            .scan(dir.path(), stable)
            .expect("scan")
            .ready
            .is_empty());
        std::thread::sleep(Duration::from_millis(40));
        let ready = settling.scan(dir.path(), stable).expect("scan").ready;
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].name, OsString::from("a.csv"));
    }

    #[test]
    fn free_names_never_overwrite() {
        let dir = tempfile::tempdir().expect("dir");
        assert_eq!(
            free_name(dir.path(), "stock.csv").expect("name"),
            "stock.csv"
        );
        fs::write(dir.path().join("stock.csv"), "").expect("write");
        assert_eq!(
            free_name(dir.path(), "stock.csv").expect("name"),
            "stock.2.csv"
        );
        fs::write(dir.path().join("stock.2.csv.result.json"), "").expect("write");
        assert_eq!(
            free_name(dir.path(), "stock.csv").expect("name"),
            "stock.3.csv"
        );
        fs::write(dir.path().join("README"), "").expect("write");
        assert_eq!(free_name(dir.path(), "README").expect("name"), "README.2");
    }

    #[test]
    fn digest_covers_source_name_and_content() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("a.csv");
        fs::write(&path, "sku,location\n").expect("write");
        let mut go = || true;
        let digest = |source: &str, name: &[u8], go: &mut dyn FnMut() -> bool| {
            fingerprint(&path, source, name, go)
                .expect("read")
                .expect("whole")
                .digest
        };
        let first = digest("3pl", b"a.csv", &mut go);
        assert_eq!(first, digest("3pl", b"a.csv", &mut go));
        assert_ne!(first, digest("3pl", b"b.csv", &mut go));
        assert_ne!(first, digest("other", b"a.csv", &mut go));
        fs::write(&path, "sku,location\nx,y\n").expect("write");
        assert_ne!(first, digest("3pl", b"a.csv", &mut go));
        fs::write(&path, b"PK\x03\x04\x00\x00").expect("write");
        let print = fingerprint(&path, "3pl", b"a.csv", &mut go)
            .expect("read")
            .expect("whole");
        assert!(print.binary);
        assert_eq!(print.size, 6);
    }

    #[test]
    fn atomic_writes_leave_no_temporary() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("r.result.json");
        write_atomically(&path, b"{}").expect("write");
        write_atomically(&path, b"{\"a\":1}").expect("write");
        assert_eq!(fs::read(&path).expect("read"), b"{\"a\":1}");
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![OsString::from("r.result.json")]);
    }
}

/// Opens a file to read without following a symlink and without blocking on a
/// FIFO, and only if it is a regular file: a partner cannot swap a link to
/// another file (or a device) in after the scan looked.
pub(super) fn open_regular(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(file)
}

/// Longest physical line (between line breaks) read from an inbox file.
pub(super) const LINE_BYTES_MAX: usize = 64 * 1024;

/// Wraps a reader and fails with [`LineTooLong`] as soon as a physical line
/// runs over `LINE_BYTES_MAX`, so one hostile row cannot make the CSV reader
/// hold a huge record.
pub(super) struct LineLimit<R> {
    inner: R,
    run: usize,
}

/// The error [`LineLimit`] fails with.
#[derive(Debug)]
pub(super) struct LineTooLong;

impl std::fmt::Display for LineTooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a line is longer than {LINE_BYTES_MAX} bytes")
    }
}

impl std::error::Error for LineTooLong {}

impl<R: Read> LineLimit<R> {
    pub(super) fn new(inner: R) -> LineLimit<R> {
        LineLimit { inner, run: 0 }
    }
}

impl<R: Read> Read for LineLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        for byte in &buf[..n] {
            if *byte == b'\n' || *byte == b'\r' {
                self.run = 0;
            } else {
                self.run += 1;
                if self.run > LINE_BYTES_MAX {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, LineTooLong));
                }
            }
        }
        Ok(n)
    }
}

/// Whether a CSV reading error is [`LineLimit`]'s.
pub(super) fn is_line_too_long(error: &csv::Error) -> bool {
    match error.kind() {
        csv::ErrorKind::Io(io) => io.get_ref().is_some_and(|inner| inner.is::<LineTooLong>()),
        _ => false,
    }
}

#[cfg(test)]
mod line_limit_tests {
    use super::*;

    #[test]
    fn long_lines_fail_and_line_breaks_reset_the_count() {
        let ok = format!(
            "{}\n{}\r{}",
            "a".repeat(LINE_BYTES_MAX),
            "b".repeat(LINE_BYTES_MAX),
            "c".repeat(10)
        );
        let mut out = Vec::new();
        LineLimit::new(ok.as_bytes())
            .read_to_end(&mut out)
            .expect("within the limit");
        assert_eq!(out.len(), ok.len());
        let bad = ",".repeat(LINE_BYTES_MAX + 1);
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(LineLimit::new(bad.as_bytes()));
        let mut record = csv::ByteRecord::new();
        let error = reader.read_byte_record(&mut record).expect_err("too long");
        assert!(is_line_too_long(&error), "{error}");
    }
}
