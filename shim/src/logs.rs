//! Container output in the CRI log format, rotated by size.
//!
//! Each line is `<RFC 3339 time with nanoseconds> <stream> <tag> <content>\n`, e.g.
//! `2024-01-01T00:00:00.123456789Z stdout F hello`, where the tag is `F` for a full line and
//! `P` for a part of a line longer than [`MAX_LINE`] (the rest follows in later entries; the
//! last part is `F`). A trailing `\r` (terminal output) is dropped. When writing an entry would
//! make the file larger than `max_size`, the file is rotated: `log` becomes `log.1`, `log.1`
//! becomes `log.2`, ..., keeping `max_files` rotated files.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest line written as one entry; longer lines are split into `P` entries.
pub const MAX_LINE: usize = 16 * 1024;

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// A CRI log file with size-based rotation.
pub struct CriLog {
    path: PathBuf,
    file: File,
    size: u64,
    max_size: u64,
    max_files: u32,
}

impl CriLog {
    /// Opens (appends to) the log at `path`; `max_size` 0 = never rotate.
    pub fn open(path: &Path, max_size: u64, max_files: u32) -> std::io::Result<CriLog> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(CriLog {
            path: path.to_owned(),
            file,
            size,
            max_size,
            max_files,
        })
    }

    /// Writes one entry.
    pub fn write_entry(&mut self, stream: Stream, partial: bool, content: &[u8]) {
        let mut entry = Vec::with_capacity(content.len() + 48);
        entry.extend_from_slice(rfc3339_nano(SystemTime::now()).as_bytes());
        entry.push(b' ');
        entry.extend_from_slice(stream.name().as_bytes());
        entry.extend_from_slice(if partial { b" P " } else { b" F " });
        entry.extend_from_slice(content);
        entry.push(b'\n');
        if self.max_size > 0
            && self.size > 0
            && self.size + entry.len() as u64 > self.max_size
            && let Err(e) = self.rotate()
        {
            tracing::warn!(log = %self.path.display(), error = %e, "cannot rotate log");
        }
        match self.file.write_all(&entry) {
            Ok(()) => self.size += entry.len() as u64,
            Err(e) => tracing::warn!(log = %self.path.display(), error = %e, "cannot write log"),
        }
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the file at the log's path again (appending, created if missing), for a client
    /// that moved the old file away (CRI ReopenContainerLog, after the kubelet rotated it).
    pub fn reopen(&mut self) -> std::io::Result<()> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = file.metadata()?.len();
        self.file = file;
        Ok(())
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        if self.max_files == 0 {
            self.file.set_len(0)?;
        } else {
            let _ = std::fs::remove_file(self.rotated(self.max_files));
            for n in (1..self.max_files).rev() {
                let _ = std::fs::rename(self.rotated(n), self.rotated(n + 1));
            }
            std::fs::rename(&self.path, self.rotated(1))?;
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
        }
        self.size = 0;
        Ok(())
    }
}

/// Splits one stream's bytes into log entries.
pub struct LineSplitter {
    stream: Stream,
    pending: Vec<u8>,
}

impl LineSplitter {
    /// A splitter for `stream`.
    pub fn new(stream: Stream) -> LineSplitter {
        LineSplitter {
            stream,
            pending: Vec::new(),
        }
    }

    /// Feeds bytes; complete lines (and over-long parts) go to `out`.
    pub fn feed(&mut self, mut data: &[u8], out: &mut impl FnMut(Stream, bool, &[u8])) {
        while let Some(i) = data.iter().position(|b| *b == b'\n') {
            self.pending.extend_from_slice(&data[..i]);
            data = &data[i + 1..];
            let mut line = std::mem::take(&mut self.pending);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            self.emit(&line, out);
        }
        self.pending.extend_from_slice(data);
        while self.pending.len() > MAX_LINE {
            let rest = self.pending.split_off(MAX_LINE);
            out(self.stream, true, &self.pending);
            self.pending = rest;
        }
    }

    fn emit(&self, mut line: &[u8], out: &mut impl FnMut(Stream, bool, &[u8])) {
        while line.len() > MAX_LINE {
            out(self.stream, true, &line[..MAX_LINE]);
            line = &line[MAX_LINE..];
        }
        out(self.stream, false, line);
    }

    /// End of stream: an unterminated last line is written as a full line.
    pub fn finish(&mut self, out: &mut impl FnMut(Stream, bool, &[u8])) {
        if !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            self.emit(&line, out);
        }
    }
}

/// Formats `t` like Go's `time.RFC3339Nano` in UTC (trailing zeros of the fraction dropped).
pub fn rfc3339_nano(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let (y, m, day) = civil_from_days(days);
    let mut s = format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    let nanos = d.subsec_nanos();
    if nanos > 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's method).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn time_format_matches_go() {
        let t = UNIX_EPOCH + Duration::new(1_704_067_200, 120_000_000);
        assert_eq!(rfc3339_nano(t), "2024-01-01T00:00:00.12Z");
        let t = UNIX_EPOCH + Duration::new(951_782_400 + 3661, 0);
        assert_eq!(rfc3339_nano(t), "2000-02-29T01:01:01Z");
    }

    #[test]
    fn lines_are_split_and_tagged() {
        let mut got = Vec::new();
        let mut out = |s: Stream, p: bool, c: &[u8]| got.push((s, p, c.to_vec()));
        let mut sp = LineSplitter::new(Stream::Stderr);
        sp.feed(b"a\r\nb", &mut out);
        sp.feed(b"c\n", &mut out);
        sp.feed(&vec![b'x'; MAX_LINE + 3], &mut out);
        sp.finish(&mut out);
        assert_eq!(got[0], (Stream::Stderr, false, b"a".to_vec()));
        assert_eq!(got[1], (Stream::Stderr, false, b"bc".to_vec()));
        assert!(got[2].1);
        assert_eq!(got[2].2.len(), MAX_LINE);
        assert_eq!(got[3], (Stream::Stderr, false, b"xxx".to_vec()));
    }

    #[test]
    fn rotation_keeps_max_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.log");
        let mut log = CriLog::open(&path, 200, 2).expect("open");
        for _ in 0..20 {
            log.write_entry(Stream::Stdout, false, &[b'y'; 60]);
        }
        assert!(path.exists());
        assert!(dir.path().join("c.log.1").exists());
        assert!(dir.path().join("c.log.2").exists());
        assert!(!dir.path().join("c.log.3").exists());
        assert!(std::fs::metadata(&path).expect("meta").len() <= 200);
    }
}
