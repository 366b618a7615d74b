//! JSON lines: records to stdout or to a file with size-based rotation. Whole lines only: lines
//! are written in batches by one `write_all` at batch boundaries, and a file whose last line was
//! torn by a crash is cut back to its last complete line when it is opened again.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

use crate::pipeline::{Record, Sink};
use crate::record::Verdict;

/// Which records a sink writes. Gap records always pass: a filtered log must still say what it
/// may be missing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Empty: every verdict.
    pub verdicts: Vec<Verdict>,
}

impl Filter {
    /// Parses `allow,deny,audit_deny` (empty string: everything).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut verdicts = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            verdicts.push(match part {
                "allow" => Verdict::Allow,
                "deny" => Verdict::Deny,
                "audit_deny" => Verdict::AuditDeny,
                other => {
                    return Err(format!(
                        "unknown verdict {other:?}: use allow, deny or audit_deny"
                    ));
                }
            });
        }
        Ok(Self { verdicts })
    }

    pub fn matches(&self, record: &Record) -> bool {
        match record {
            Record::Gap(_) | Record::Node(_) => true,
            Record::Flow(f) => self.verdicts.is_empty() || self.verdicts.contains(&f.verdict),
        }
    }
}

/// How a record becomes a line.
pub type Formatter = fn(&Record) -> String;

#[derive(Debug)]
enum Target {
    Stdout,
    File {
        path: PathBuf,
        file: File,
        size: u64,
        max_bytes: u64,
        keep: usize,
    },
}

/// A JSON-lines sink.
#[derive(Debug)]
pub struct JsonlSink {
    name: String,
    target: Target,
    filter: Filter,
    /// `None`: the record's JSON, written straight into the batch.
    format: Option<Formatter>,
    batch: Vec<u8>,
}

/// Flush a batch early past this size.
const BATCH_BYTES: usize = 256 * 1024;

impl JsonlSink {
    pub fn stdout(filter: Filter) -> Self {
        Self {
            name: "stdout".into(),
            target: Target::Stdout,
            filter,
            format: None,
            batch: Vec::new(),
        }
    }

    /// Appends to `path`, rotating it to `path.1` .. `path.<keep>` past `max_bytes`.
    pub fn file(path: &Path, max_bytes: u64, keep: usize, filter: Filter) -> std::io::Result<Self> {
        let (file, size) = open_repaired(path)?;
        Ok(Self {
            name: "file".into(),
            target: Target::File {
                path: path.to_owned(),
                file,
                size,
                max_bytes: max_bytes.max(1),
                keep,
            },
            filter,
            format: None,
            batch: Vec::new(),
        })
    }

    /// Writes lines in another format (e.g. OCSF).
    pub fn with_format(mut self, format: Formatter) -> Self {
        self.format = Some(format);
        self
    }

    fn write_batch(&mut self) -> std::io::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        match &mut self.target {
            Target::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(&self.batch)?;
                out.flush()?;
            }
            Target::File {
                path,
                file,
                size,
                max_bytes,
                keep,
            } => {
                file.write_all(&self.batch)?;
                *size += self.batch.len() as u64;
                if *size >= *max_bytes {
                    file.sync_data()?;
                    rotate(path, *keep)?;
                    let (f, s) = open_repaired(path)?;
                    *file = f;
                    *size = s;
                }
            }
        }
        self.batch.clear();
        Ok(())
    }
}

impl Sink for JsonlSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn write(&mut self, record: &Record) -> std::io::Result<()> {
        if !self.filter.matches(record) {
            return Ok(());
        }
        match self.format {
            None => record.write_json(&mut self.batch),
            Some(format) => self.batch.extend_from_slice(format(record).as_bytes()),
        }
        self.batch.push(b'\n');
        if self.batch.len() >= BATCH_BYTES {
            self.write_batch()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.write_batch()
    }
}

/// Opens for appending; a torn last line (no trailing newline) is cut off first.
fn open_repaired(path: &Path) -> std::io::Result<(File, u64)> {
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
    let len = file.metadata()?.len();
    if len > 0 {
        let tail_len = len.min(1 << 20);
        file.seek(SeekFrom::Start(len - tail_len))?;
        let mut tail = Vec::new();
        std::io::Read::take(&mut file, tail_len).read_to_end(&mut tail)?;
        if tail.last() != Some(&b'\n') {
            let keep = tail
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(len - tail_len, |i| len - tail_len + i as u64 + 1);
            file.set_len(keep)?;
            return Ok((file, keep));
        }
    }
    Ok((file, len))
}

/// `path` -> `path.1`, `path.1` -> `path.2`, ...; the oldest beyond `keep` is removed.
fn rotate(path: &Path, keep: usize) -> std::io::Result<()> {
    let numbered = |n: usize| PathBuf::from(format!("{}.{n}", path.display()));
    if keep == 0 {
        return std::fs::remove_file(path);
    }
    let _ = std::fs::remove_file(numbered(keep));
    for n in (1..keep).rev() {
        if numbered(n).exists() {
            std::fs::rename(numbered(n), numbered(n + 1))?;
        }
    }
    std::fs::rename(path, numbered(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::Enricher;

    fn records(n: usize) -> Vec<Record> {
        let mut e = Enricher::new("n1", 0);
        (0..n)
            .map(|i| {
                let ev = flowgate_abi::FlowEvent {
                    version: flowgate_abi::ABI_VERSION,
                    verdict: u8::from(i % 2 == 1),
                    ip_version: 4,
                    proto: 6,
                    count: 1,
                    ..Default::default()
                };
                Record::Flow(e.enrich(&ev))
            })
            .collect()
    }

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("flowgate-jsonl-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn rotates_by_size_keeps_n_files_and_writes_whole_lines() {
        let d = dir("rotate");
        let path = d.join("flows.jsonl");
        let mut sink = JsonlSink::file(&path, 4096, 2, Filter::default()).unwrap();
        for r in records(200) {
            sink.write(&r).unwrap();
            sink.flush().unwrap();
        }
        let mut files: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        assert_eq!(
            files,
            vec!["flows.jsonl", "flows.jsonl.1", "flows.jsonl.2"],
            "current + 2 kept"
        );
        for f in &files {
            let text = std::fs::read_to_string(d.join(f)).unwrap();
            assert!(
                text.is_empty() || text.ends_with('\n'),
                "{f} ends with a whole line"
            );
            for line in text.lines() {
                let v: serde_json::Value =
                    serde_json::from_str(line).expect("every line is a whole record");
                assert_eq!(v["schema"], "flowgate.flow/v1");
            }
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_torn_last_line_is_cut_on_open_and_the_filter_keeps_gaps() {
        let d = dir("torn");
        let path = d.join("flows.jsonl");
        std::fs::write(&path, "{\"seq\":1}\n{\"seq\":2,\"ver").unwrap();
        let mut sink = JsonlSink::file(&path, 1 << 20, 1, Filter::parse("deny").unwrap()).unwrap();
        for r in records(4) {
            sink.write(&r).unwrap();
        }
        let gap = crate::gap::GapRecord::new(
            "t".into(),
            9,
            "n1",
            &crate::gap::Stage::Ringbuf,
            crate::gap::LostCounts {
                allow: 1,
                deny: 0,
                audit: 0,
            },
            None,
        );
        sink.write(&Record::Gap(gap)).unwrap();
        sink.flush().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0], "{\"seq\":1}",
            "the complete line stays, the torn one is gone"
        );
        assert_eq!(
            lines.len(),
            1 + 2 + 1,
            "2 of 4 records are denies, plus the gap record"
        );
        assert!(lines[3].contains("\"record_type\":\"gap\""));
        assert!(Filter::parse("drop").is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
