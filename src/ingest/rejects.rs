//! The rejected-rows file of the file being processed: each rejected row as
//! the partner sent it, with its line, code and reason appended, kept in
//! `processing/.<file id>.rejects` until the file is filed (then moved to
//! `rejected/`).
//!
//! What it owns: that file's bytes. It is only ever appended to (and
//! fsynced) and, on a resume, cut back to the length the progress record
//! covers. It must not decide which rows are rejected ([`super::progress`]
//! does) or where the file is filed ([`super::job`]).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::PathBuf;

use super::reader::Row;

/// The rejected rows of the file being processed, in `processing/.<file id>.rejects`
/// until the file is filed.
pub(super) struct RejectsFile {
    path: PathBuf,
    file: Option<File>,
    len: u64,
    delimiter: u8,
    header: Option<Vec<Vec<u8>>>,
}

/// Columns appended to each rejected row (after the partner's own, so a fixed
/// file can be dropped again as it is: columns are found by name or position).
const REJECT_COLUMNS: [&str; 3] = ["rejected_line", "rejected_code", "rejected_reason"];

impl RejectsFile {
    /// Opens the rejected-rows file, keeping its first `keep` bytes (what the
    /// progress record covers) and dropping anything a crash left after them.
    pub(super) fn open(
        path: PathBuf,
        keep: u64,
        delimiter: u8,
        header: Option<Vec<Vec<u8>>>,
    ) -> io::Result<RejectsFile> {
        let mut rejects = RejectsFile {
            path,
            file: None,
            len: 0,
            delimiter,
            header,
        };
        if keep == 0 {
            match fs::remove_file(&rejects.path) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
                _ => {}
            }
            return Ok(rejects);
        }
        match OpenOptions::new().write(true).open(&rejects.path) {
            Ok(mut file) => {
                file.set_len(keep)?;
                file.seek(SeekFrom::End(0))?;
                rejects.file = Some(file);
                rejects.len = keep;
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                tracing::warn!(path = %rejects.path.display(), "rejected rows file missing; earlier rejected rows are only in the exception queue");
            }
            Err(error) => return Err(error),
        }
        Ok(rejects)
    }

    /// Bytes in the file (what the progress record's `rejects_bytes` covers
    /// once the chunk is recorded).
    pub(super) fn bytes(&self) -> u64 {
        self.len
    }

    fn encode(&self, records: &[Vec<Vec<u8>>]) -> io::Result<Vec<u8>> {
        let mut writer = csv::WriterBuilder::new()
            .delimiter(self.delimiter)
            .flexible(true)
            .terminator(csv::Terminator::Any(b'\n'))
            .from_writer(Vec::new());
        for record in records {
            writer.write_record(record)?;
        }
        writer
            .into_inner()
            .map_err(|e| io::Error::other(e.to_string()))
    }

    /// Appends rows (cells, then line, code and reason) and fsyncs.
    pub(super) fn append(&mut self, rows: &[(&Row, &str, &str)]) -> io::Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut records = Vec::with_capacity(rows.len() + 1);
        if self.file.is_none() {
            let file = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&self.path)?;
            self.file = Some(file);
            self.len = 0;
            if let Some(header) = &self.header {
                let mut names = header.clone();
                names.extend(REJECT_COLUMNS.iter().map(|c| c.as_bytes().to_vec()));
                records.push(names);
            }
        }
        for (row, code, detail) in rows {
            let mut cells = row.cells.clone();
            cells.push(row.line.to_string().into_bytes());
            cells.push(code.as_bytes().to_vec());
            cells.push(detail.as_bytes().to_vec());
            records.push(cells);
        }
        let bytes = self.encode(&records)?;
        let Some(file) = self.file.as_mut() else {
            return Err(io::Error::other("rejected rows file not open"));
        };
        file.write_all(&bytes)?;
        file.sync_data()?;
        self.len += bytes.len() as u64;
        Ok(())
    }
}

/// The rejected-rows file of `name`: the same name, `.csv` added when it has
/// another extension.
pub(super) fn rejects_name(name: &str) -> String {
    if name.to_ascii_lowercase().ends_with(".csv") {
        name.to_string()
    } else {
        format!("{name}.csv")
    }
}
