//! Reader of a container's log files for the Tasks.Logs RPC.
//!
//! The shim writes the init process's output in the CRI log format (see `berth-shim`'s
//! `logs` module): `<RFC 3339 time> <stdout|stderr> <P|F> <content>` per line, rotated by size
//! into `<log>.1` (newest rotated), `<log>.2`, ... This module reads the whole rotated set
//! oldest first, applies the request's stream selection, since/until and tail, and with
//! `follow` keeps polling the live file (noticing appends, rotation and truncation) until the
//! task is gone and the file is drained.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use berth_api::berth::tasks::v1::{LogEntry, LogsRequest, LogsResponse, OutputStream};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

/// How often a follower looks for new output.
const POLL: Duration = Duration::from_millis(50);
/// Entries per response message.
const BATCH_ENTRIES: usize = 256;
/// Bytes of entry data per response message (well below gRPC's 4 MiB message limit).
const BATCH_BYTES: usize = 512 * 1024;
/// Rotated files looked at (`<log>.1` ... `<log>.N`).
const MAX_ROTATED: u32 = 1000;

/// What to read, from a [`LogsRequest`].
#[derive(Debug, Clone, Default)]
struct Selection {
    stdout: bool,
    stderr: bool,
    since: Option<SystemTime>,
    until: Option<SystemTime>,
    timestamps: bool,
}

impl Selection {
    fn from_request(req: &LogsRequest) -> Selection {
        let both = !req.stdout && !req.stderr;
        let time = |t: &Option<prost_types::Timestamp>| {
            t.as_ref().and_then(|t| SystemTime::try_from(*t).ok())
        };
        Selection {
            stdout: req.stdout || both,
            stderr: req.stderr || both,
            since: time(&req.since),
            until: time(&req.until),
            timestamps: req.timestamps,
        }
    }

    /// The entry for `line` if it is selected; `Err(())` if it is at or after `until`.
    fn entry(&self, line: &[u8]) -> Result<Option<LogEntry>, ()> {
        let Some(parsed) = parse_line(line) else {
            return Ok(None);
        };
        if self.until.is_some_and(|u| parsed.time >= u) {
            return Err(());
        }
        let wanted = match parsed.stream {
            OutputStream::Stderr => self.stderr,
            _ => self.stdout,
        };
        if !wanted || self.since.is_some_and(|s| parsed.time < s) {
            return Ok(None);
        }
        let mut data = parsed.content.to_vec();
        if !parsed.partial {
            data.push(b'\n');
        }
        Ok(Some(LogEntry {
            time: self.timestamps.then(|| parsed.time.into()),
            stream: parsed.stream as i32,
            partial: parsed.partial,
            data,
        }))
    }
}

struct Parsed<'a> {
    time: SystemTime,
    stream: OutputStream,
    partial: bool,
    content: &'a [u8],
}

/// `<time> <stream> <P|F> <content>` (content may be empty).
fn parse_line(line: &[u8]) -> Option<Parsed<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?;
    let time = humantime::parse_rfc3339(time).ok()?;
    let stream = match parts.next()? {
        b"stdout" => OutputStream::Stdout,
        b"stderr" => OutputStream::Stderr,
        _ => return None,
    };
    let partial = match parts.next()? {
        b"P" => true,
        b"F" => false,
        _ => return None,
    };
    Some(Parsed {
        time,
        stream,
        partial,
        content: parts.next().unwrap_or_default(),
    })
}

/// Streams the log at `path` (with its rotated files) as the Logs RPC answers.
///
/// Without `follow` the stream ends after the existing entries. With `follow` it ends when
/// `running` turns false (or its sender is dropped) and the file is drained, when an entry at
/// or after `until` shows up, or when the client goes away. A log that does not exist yet
/// reads as empty.
pub fn stream(
    path: PathBuf,
    request: &LogsRequest,
    running: watch::Receiver<bool>,
) -> ReceiverStream<Result<LogsResponse, tonic::Status>> {
    let (tx, rx) = mpsc::channel(4);
    let reader = Reader {
        path,
        selection: Selection::from_request(request),
        tail: request.tail,
        follow: request.follow,
        tx,
        batch: Vec::new(),
        batch_bytes: 0,
    };
    tokio::task::spawn_blocking(move || {
        let tx = reader.tx.clone();
        if let Err(e) = reader.run(running) {
            let _ = tx.blocking_send(Err(tonic::Status::internal(e.to_string())));
        }
    });
    ReceiverStream::new(rx)
}

/// Why reading stopped early.
enum Stop {
    /// The client went away, or `until` was reached: nothing more to send.
    Done,
    /// A file could not be read.
    Io(std::io::Error),
}

impl From<std::io::Error> for Stop {
    fn from(e: std::io::Error) -> Stop {
        Stop::Io(e)
    }
}

/// An open log file and how far it has been read.
struct Cursor {
    file: File,
    ino: u64,
    offset: u64,
    /// The start of a line not complete yet.
    pending: Vec<u8>,
}

impl Cursor {
    fn open(path: &Path) -> std::io::Result<Option<Cursor>> {
        match File::open(path) {
            Ok(file) => {
                let ino = file.metadata()?.ino();
                Ok(Some(Cursor {
                    file,
                    ino,
                    offset: 0,
                    pending: Vec::new(),
                }))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Calls `line` for each complete line written since the last read.
    fn read_lines(&mut self, mut line: impl FnMut(&[u8]) -> Result<(), Stop>) -> Result<(), Stop> {
        let len = self.file.metadata()?.len();
        if len < self.offset {
            // Truncated in place (rotation without kept files): start over.
            self.offset = 0;
            self.pending.clear();
        }
        self.file.seek(SeekFrom::Start(self.offset))?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = self.file.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            self.offset += n as u64;
            let mut chunk = &buf[..n];
            while let Some(nl) = chunk.iter().position(|b| *b == b'\n') {
                if self.pending.is_empty() {
                    line(&chunk[..nl])?;
                } else {
                    self.pending.extend_from_slice(&chunk[..nl]);
                    let l = std::mem::take(&mut self.pending);
                    line(&l)?;
                }
                chunk = &chunk[nl + 1..];
            }
            self.pending.extend_from_slice(chunk);
        }
    }
}

struct Reader {
    path: PathBuf,
    selection: Selection,
    tail: Option<u64>,
    follow: bool,
    tx: mpsc::Sender<Result<LogsResponse, tonic::Status>>,
    batch: Vec<LogEntry>,
    batch_bytes: usize,
}

impl Reader {
    fn run(mut self, running: watch::Receiver<bool>) -> std::io::Result<()> {
        match self.read_all(running) {
            Ok(()) | Err(Stop::Done) => {
                let _ = self.flush();
                Ok(())
            }
            Err(Stop::Io(e)) => Err(e),
        }
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn read_all(&mut self, running: watch::Receiver<bool>) -> Result<(), Stop> {
        // Open the live file first, then the rotated ones: an open file stays readable when
        // it is renamed, and a rotation in between shows up as the same inode twice.
        let mut live = Cursor::open(&self.path)?;
        let mut files: Vec<Cursor> = Vec::new();
        for n in 1..=MAX_ROTATED {
            match Cursor::open(&self.rotated(n))? {
                Some(c) => files.push(c),
                None => break,
            }
        }
        files.reverse();
        if let Some(l) = &live {
            files.retain(|c| c.ino != l.ino);
        }

        let mut tail: VecDeque<LogEntry> = VecDeque::new();
        let limit = self.tail;
        let selection = self.selection.clone();
        let mut reached_until = false;
        {
            let mut on_line = |line: &[u8], out: &mut Self| -> Result<(), Stop> {
                match selection.entry(line) {
                    Ok(Some(entry)) => match limit {
                        Some(0) => Ok(()),
                        Some(n) => {
                            if tail.len() as u64 == n {
                                tail.pop_front();
                            }
                            tail.push_back(entry);
                            Ok(())
                        }
                        None => out.push(entry),
                    },
                    Ok(None) => Ok(()),
                    Err(()) => {
                        reached_until = true;
                        Err(Stop::Done)
                    }
                }
            };
            let mut result = Ok(());
            for c in files.iter_mut().chain(live.iter_mut()) {
                result = c.read_lines(|l| on_line(l, self));
                if result.is_err() {
                    break;
                }
            }
            match result {
                Err(Stop::Done) if reached_until => {}
                other => other?,
            }
        }
        for entry in tail {
            self.push(entry)?;
        }
        if !self.follow || reached_until {
            return Ok(());
        }
        self.flush()?;
        self.follow(live, running)
    }

    /// Polls the live file until the task is gone and the file drained.
    fn follow(
        &mut self,
        mut live: Option<Cursor>,
        running: watch::Receiver<bool>,
    ) -> Result<(), Stop> {
        let selection = self.selection.clone();
        loop {
            // Read the state before draining: output written before the task stopped is then
            // always read by the pass below.
            let gone = !*running.borrow() || running.has_changed().is_err();
            // Finish the file we hold, then switch if the path now names another file.
            if let Some(c) = live.as_mut() {
                c.read_lines(|l| self.line(&selection, l))?;
            }
            let current = std::fs::metadata(&self.path).ok().map(|m| m.ino());
            if current.is_some() && current != live.as_ref().map(|c| c.ino) {
                // Several rotations since the last look: the files between the one we held
                // (now `<log>.k`) and the new live file are read whole, oldest first.
                if let Some(held) = live.as_ref().map(|c| c.ino) {
                    for mut c in self.rotated_since(held)? {
                        c.read_lines(|l| self.line(&selection, l))?;
                    }
                }
                live = Cursor::open(&self.path)?;
                if let Some(c) = live.as_mut() {
                    c.read_lines(|l| self.line(&selection, l))?;
                }
            }
            self.flush()?;
            if gone {
                return Ok(());
            }
            if self.tx.is_closed() {
                return Err(Stop::Done);
            }
            std::thread::sleep(POLL);
        }
    }

    /// The rotated files newer than the one with inode `held`, oldest first (none if `held`
    /// is not among them any more: it was rotated away entirely).
    fn rotated_since(&self, held: u64) -> std::io::Result<Vec<Cursor>> {
        let mut newer = Vec::new();
        for n in 1..=MAX_ROTATED {
            match Cursor::open(&self.rotated(n))? {
                Some(c) if c.ino == held => {
                    newer.reverse();
                    return Ok(newer);
                }
                Some(c) => newer.push(c),
                None => break,
            }
        }
        Ok(Vec::new())
    }

    fn line(&mut self, selection: &Selection, line: &[u8]) -> Result<(), Stop> {
        match selection.entry(line) {
            Ok(Some(entry)) => self.push(entry),
            Ok(None) => Ok(()),
            Err(()) => {
                self.flush()?;
                Err(Stop::Done)
            }
        }
    }

    fn push(&mut self, entry: LogEntry) -> Result<(), Stop> {
        self.batch_bytes += entry.data.len();
        self.batch.push(entry);
        if self.batch.len() >= BATCH_ENTRIES || self.batch_bytes >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Stop> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let entries = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        self.tx
            .blocking_send(Ok(LogsResponse { entries }))
            .map_err(|_| Stop::Done)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use tokio_stream::StreamExt;

    use super::*;

    fn line(secs: u64, stream: &str, tag: &str, content: &str) -> String {
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000 + secs, 123_456_789);
        format!(
            "{} {stream} {tag} {content}\n",
            humantime::format_rfc3339_nanos(t)
        )
    }

    fn time(secs: u64) -> prost_types::Timestamp {
        (SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)).into()
    }

    fn append(path: &Path, text: &str) {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }

    /// Three files: .2 (oldest) lines 0-1, .1 lines 2-3, live lines 4-6.
    fn rotated_set(dir: &Path) -> PathBuf {
        let log = dir.join("container.log");
        append(
            &dir.join("container.log.2"),
            &(line(0, "stdout", "F", "l0") + &line(1, "stderr", "F", "l1")),
        );
        append(
            &dir.join("container.log.1"),
            &(line(2, "stdout", "P", "l2a") + &line(2, "stdout", "F", "l2b")),
        );
        append(
            &log,
            &(line(4, "stderr", "F", "l4")
                + "garbage line\n"
                + &line(5, "stdout", "F", "")
                + &line(6, "stdout", "F", "l6 with spaces")),
        );
        log
    }

    async fn collect(path: &Path, req: LogsRequest) -> Vec<LogEntry> {
        let (_tx, rx) = watch::channel(false);
        let mut s = stream(path.to_owned(), &req, rx);
        let mut out = Vec::new();
        while let Some(batch) = s.next().await {
            out.extend(batch.unwrap().entries);
        }
        out
    }

    fn texts(entries: &[LogEntry]) -> Vec<String> {
        entries
            .iter()
            .map(|e| String::from_utf8(e.data.clone()).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn reads_the_rotated_set_with_selection() {
        let dir = tempfile::tempdir().unwrap();
        let log = rotated_set(dir.path());
        let all = collect(&log, LogsRequest::default()).await;
        assert_eq!(
            texts(&all),
            [
                "l0\n",
                "l1\n",
                "l2a",
                "l2b\n",
                "l4\n",
                "\n",
                "l6 with spaces\n"
            ]
        );
        assert!(all[2].partial && !all[3].partial);
        assert!(all.iter().all(|e| e.time.is_none()));

        let req = LogsRequest {
            stderr: true,
            timestamps: true,
            ..Default::default()
        };
        let err = collect(&log, req).await;
        assert_eq!(texts(&err), ["l1\n", "l4\n"]);
        assert_eq!(err[0].stream, OutputStream::Stderr as i32);
        assert_eq!(err[1].time.unwrap().seconds, time(4).seconds);

        let req = LogsRequest {
            tail: Some(3),
            ..Default::default()
        };
        assert_eq!(
            texts(&collect(&log, req).await),
            ["l4\n", "\n", "l6 with spaces\n"]
        );
        let req = LogsRequest {
            tail: Some(0),
            ..Default::default()
        };
        assert!(collect(&log, req).await.is_empty());
        let req = LogsRequest {
            since: Some(time(2)),
            until: Some(time(5)),
            ..Default::default()
        };
        assert_eq!(texts(&collect(&log, req).await), ["l2a", "l2b\n", "l4\n"]);
        let req = LogsRequest {
            stdout: true,
            tail: Some(2),
            until: Some(time(5)),
            ..Default::default()
        };
        assert_eq!(texts(&collect(&log, req).await), ["l2a", "l2b\n"]);

        assert!(
            collect(&dir.path().join("missing.log"), LogsRequest::default())
                .await
                .is_empty()
        );
    }

    async fn next(s: &mut ReceiverStream<Result<LogsResponse, tonic::Status>>) -> Vec<String> {
        let b = tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .unwrap();
        texts(&b.unwrap().unwrap().entries)
    }

    #[tokio::test]
    async fn follow_sees_appends_and_rotation_and_ends_with_the_task() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("container.log");
        append(&log, &line(0, "stdout", "F", "first"));
        let (running, rx) = watch::channel(true);
        let req = LogsRequest {
            follow: true,
            tail: Some(1),
            ..Default::default()
        };
        let mut s = stream(log.clone(), &req, rx);
        assert_eq!(next(&mut s).await, ["first\n"]);

        // A half-written line is held back until its newline arrives.
        let second = line(1, "stdout", "F", "second");
        append(&log, &second[..10]);
        tokio::time::sleep(Duration::from_millis(150)).await;
        append(&log, &second[10..]);
        assert_eq!(next(&mut s).await, ["second\n"]);

        // Rotation: the rest of the old file is read, then the new file.
        append(&log, &line(2, "stdout", "F", "before rotation"));
        std::fs::rename(&log, dir.path().join("container.log.1")).unwrap();
        append(&log, &line(3, "stderr", "F", "after rotation"));
        let mut got = Vec::new();
        while got.len() < 2 {
            got.extend(next(&mut s).await);
        }
        assert_eq!(got, ["before rotation\n", "after rotation\n"]);

        // Two rotations between two looks: the file in between is read too, in order.
        append(&log, &line(3, "stdout", "F", "r1"));
        std::fs::rename(
            dir.path().join("container.log.1"),
            dir.path().join("container.log.2"),
        )
        .unwrap();
        std::fs::rename(&log, dir.path().join("container.log.1")).unwrap();
        append(&log, &line(3, "stdout", "F", "r2"));
        std::fs::rename(
            dir.path().join("container.log.2"),
            dir.path().join("container.log.3"),
        )
        .unwrap();
        std::fs::rename(
            dir.path().join("container.log.1"),
            dir.path().join("container.log.2"),
        )
        .unwrap();
        std::fs::rename(&log, dir.path().join("container.log.1")).unwrap();
        append(&log, &line(3, "stdout", "F", "r3"));
        let mut got = Vec::new();
        while got.len() < 3 {
            got.extend(next(&mut s).await);
        }
        assert_eq!(got, ["r1\n", "r2\n", "r3\n"]);

        // Output written just before the task stops is still delivered, then the stream ends.
        append(&log, &line(4, "stdout", "F", "last words"));
        running.send(false).unwrap();
        let mut rest = Vec::new();
        while let Some(b) = tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .unwrap()
        {
            rest.extend(texts(&b.unwrap().entries));
        }
        assert_eq!(rest, ["last words\n"]);
    }

    #[tokio::test]
    async fn follow_ends_at_until_and_when_the_sender_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("container.log");
        append(&log, &line(0, "stdout", "F", "a"));
        let (running, rx) = watch::channel(true);
        let req = LogsRequest {
            follow: true,
            until: Some(time(2)),
            ..Default::default()
        };
        let mut s = stream(log.clone(), &req, rx);
        append(
            &log,
            &(line(1, "stdout", "F", "b") + &line(3, "stdout", "F", "c")),
        );
        let mut got = Vec::new();
        while let Some(b) = tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .unwrap()
        {
            got.extend(texts(&b.unwrap().entries));
        }
        assert_eq!(got, ["a\n", "b\n"]);
        drop(running);

        let (running, rx) = watch::channel(true);
        let req = LogsRequest {
            follow: true,
            ..Default::default()
        };
        let mut s = stream(log.clone(), &req, rx);
        assert_eq!(
            texts(&s.next().await.unwrap().unwrap().entries),
            ["a\n", "b\n", "c\n"]
        );
        drop(running);
        assert!(
            tokio::time::timeout(Duration::from_secs(5), s.next())
                .await
                .unwrap()
                .is_none()
        );
    }
}
