//! Streaming readers for rating files: MovieLens 100K (tab), 1M/10M (`::`) and CSV with a header.

use crate::data::Dataset;
use crate::error::EngineError;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The on-disk layout of a ratings file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `user<TAB>item<TAB>rating<TAB>timestamp` (MovieLens 100K `u.data`).
    Tab,
    /// `user::item::rating::timestamp` (MovieLens 1M/10M `ratings.dat`).
    Dat,
    /// `userId,movieId,rating,timestamp` with a header line (MovieLens "latest").
    Csv,
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "tab" | "ml100k" | "tsv" | "udata" => Ok(Format::Tab),
            "dat" | "ml1m" | "ml10m" => Ok(Format::Dat),
            "csv" => Ok(Format::Csv),
            other => Err(format!(
                "unknown format {other:?} (expected tab, dat or csv)"
            )),
        }
    }
}

impl Format {
    /// Guesses the format from the first non-empty line.
    pub fn detect(first_line: &str) -> Option<Format> {
        if first_line.contains("::") {
            Some(Format::Dat)
        } else if first_line.contains('\t') {
            Some(Format::Tab)
        } else if first_line.contains(',') {
            Some(Format::Csv)
        } else {
            None
        }
    }

    fn split(self, line: &str) -> Vec<&str> {
        match self {
            Format::Tab => line.split('\t').collect(),
            Format::Dat => line.split("::").collect(),
            Format::Csv => line.split(',').collect(),
        }
    }
}

/// One parsed row with external ids.
#[derive(Debug, Clone, PartialEq)]
pub struct RawRating {
    pub user: String,
    pub item: String,
    pub value: f32,
    pub timestamp: Option<i64>,
}

/// A borrowed view of one parsed row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row<'a> {
    pub user: &'a str,
    pub item: &'a str,
    pub value: f32,
    pub timestamp: Option<i64>,
}

/// Parses one data line (no line ending) in `format`.
pub fn parse_line(format: Format, line: &str) -> Result<Row<'_>, String> {
    let fields = format.split(line);
    if fields.len() < 3 || fields.len() > 4 {
        return Err(format!(
            "expected 3 or 4 fields (user, item, rating[, timestamp]), found {}",
            fields.len()
        ));
    }
    let id = |name: &str, s: &'_ str| -> Result<(), String> {
        if s.is_empty() {
            Err(format!("empty {name} id"))
        } else if s.chars().any(|c| c.is_control()) {
            Err(format!("{name} id contains a control character"))
        } else {
            Ok(())
        }
    };
    let (user, item) = (fields[0].trim(), fields[1].trim());
    id("user", user)?;
    id("item", item)?;
    let value: f32 = fields[2]
        .trim()
        .parse()
        .map_err(|_| format!("rating {:?} is not a number", fields[2]))?;
    if !value.is_finite() {
        return Err(format!("rating {:?} is not finite", fields[2]));
    }
    let timestamp = match fields.get(3).map(|t| t.trim()) {
        None | Some("") => None,
        Some(t) => Some(
            t.parse::<i64>()
                .map_err(|_| format!("timestamp {t:?} is not an integer"))?,
        ),
    };
    Ok(Row {
        user,
        item,
        value,
        timestamp,
    })
}

/// Reads a ratings file line by line (one reused buffer, never the whole file).
pub struct RatingsReader {
    path: PathBuf,
    input: BufReader<CountingReader<Box<dyn Read + Send>>>,
    format: Format,
    line_no: u64,
    buf: Vec<u8>,
    total: u64,
    pending: Option<Vec<u8>>,
    done: bool,
}

struct CountingReader<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

fn trim_eol(mut b: &[u8]) -> &[u8] {
    if let [rest @ .., b'\n'] = b {
        b = rest;
    }
    if let [rest @ .., b'\r'] = b {
        b = rest;
    }
    b
}

impl RatingsReader {
    /// Opens `path`; the format is detected from the first non-empty line unless given.
    pub fn open(path: &Path, format: Option<Format>) -> Result<Self, EngineError> {
        let file = File::open(path).map_err(|e| EngineError::io(path, e))?;
        let total = file.metadata().map(|m| m.len()).unwrap_or(0);
        Self::from_reader(path, Box::new(file), total, format)
    }

    /// Reads from any byte stream; `name` is used in error messages.
    pub fn from_reader(
        name: &Path,
        input: Box<dyn Read + Send>,
        total: u64,
        format: Option<Format>,
    ) -> Result<Self, EngineError> {
        let mut r = RatingsReader {
            path: name.to_owned(),
            input: BufReader::with_capacity(
                (total as usize).clamp(8 << 10, 1 << 20),
                CountingReader {
                    inner: input,
                    count: 0,
                },
            ),
            format: format.unwrap_or(Format::Tab),
            line_no: 0,
            buf: Vec::with_capacity(256),
            total,
            pending: None,
            done: false,
        };
        // Look at the first non-empty line: detect the format, skip a header.
        loop {
            if !r.next_line()? {
                r.done = true;
                return Ok(r);
            }
            let line = trim_eol(&r.buf);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let text = std::str::from_utf8(line).map_err(|_| r.err("line is not valid UTF-8"))?;
            let text = text.strip_prefix('\u{feff}').unwrap_or(text);
            let fmt = match format {
                Some(f) => f,
                None => Format::detect(text).ok_or_else(|| {
                    r.err("cannot detect the format (no tab, '::' or ','); use --format")
                })?,
            };
            r.format = fmt;
            let is_header = fmt == Format::Csv && parse_line(fmt, text).is_err();
            if !is_header {
                r.pending = Some(r.buf.clone());
            }
            return Ok(r);
        }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Bytes consumed so far (for progress bars).
    pub fn bytes_read(&self) -> u64 {
        self.input.get_ref().count - self.input.buffer().len() as u64
    }

    /// File size at open time.
    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    fn err(&self, message: impl Into<String>) -> EngineError {
        EngineError::Parse {
            path: self.path.clone(),
            line: self.line_no,
            message: message.into(),
        }
    }

    fn next_line(&mut self) -> Result<bool, EngineError> {
        self.buf.clear();
        let n = self
            .input
            .read_until(b'\n', &mut self.buf)
            .map_err(|e| EngineError::io(&self.path, e))?;
        if n > 0 {
            self.line_no += 1;
        }
        Ok(n > 0)
    }

    /// Calls `f` for every row, borrowing ids from the line buffer (no allocation per row).
    pub fn for_each_row(
        &mut self,
        mut f: impl FnMut(Row<'_>) -> Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        if let Some(first) = self.pending.take() {
            self.buf = first;
            self.handle_line(&mut f)?;
        }
        while !self.done {
            if !self.next_line()? {
                self.done = true;
                break;
            }
            self.handle_line(&mut f)?;
        }
        Ok(())
    }

    fn handle_line(
        &mut self,
        f: &mut impl FnMut(Row<'_>) -> Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        let line = trim_eol(&self.buf);
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let text = std::str::from_utf8(line).map_err(|_| self.err("line is not valid UTF-8"))?;
        match parse_line(self.format, text) {
            Ok(row) => f(row),
            Err(m) => Err(self.err(m)),
        }
    }

    /// Reads everything into a [`Dataset`], checking each rating against `accept`.
    pub fn into_dataset(
        mut self,
        mut accept: impl FnMut(f32) -> Result<(), String>,
    ) -> Result<Dataset, EngineError> {
        let mut ds = Dataset::new();
        let path = self.path.clone();
        self.for_each_row(|row| {
            accept(row.value).map_err(|message| EngineError::Parse {
                path: path.clone(),
                line: 0,
                message,
            })?;
            ds.push(row.user, row.item, row.value);
            Ok(())
        })
        .map_err(|e| match e {
            EngineError::Parse {
                path,
                line: 0,
                message,
            } => EngineError::Parse {
                path,
                line: self.line_no,
                message,
            },
            other => other,
        })?;
        Ok(ds)
    }
}

impl Iterator for RatingsReader {
    type Item = Result<RawRating, EngineError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(first) = self.pending.take() {
                self.buf = first;
            } else {
                if self.done {
                    return None;
                }
                match self.next_line() {
                    Ok(true) => {}
                    Ok(false) => {
                        self.done = true;
                        return None;
                    }
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                }
            }
            let mut out = None;
            let res = self.handle_line(&mut |row: Row<'_>| {
                out = Some(RawRating {
                    user: row.user.to_owned(),
                    item: row.item.to_owned(),
                    value: row.value,
                    timestamp: row.timestamp,
                });
                Ok(())
            });
            match (res, out) {
                (Err(e), _) => {
                    self.done = true;
                    return Some(Err(e));
                }
                (Ok(()), Some(r)) => return Some(Ok(r)),
                (Ok(()), None) => continue, // blank line
            }
        }
    }
}

/// Reads a whole ratings file into a dataset; every rating must lie in `scale`.
pub fn read_dataset(
    path: &Path,
    format: Option<Format>,
    scale: crate::params::Scale,
) -> Result<Dataset, EngineError> {
    RatingsReader::open(path, format)?.into_dataset(|v| {
        if scale.contains(v) {
            Ok(())
        } else {
            Err(format!(
                "rating {v} is outside the scale {}..{}",
                scale.min, scale.max
            ))
        }
    })
}

/// Reads a test file against the id maps of a training set: unknown ids get
/// indices past the end of the maps (the model treats them as unknown).
pub fn read_against(
    path: &Path,
    format: Option<Format>,
    train: &Dataset,
) -> Result<Vec<crate::data::Rating>, EngineError> {
    let mut out = Vec::new();
    RatingsReader::open(path, format)?.for_each_row(|row| {
        out.push(crate::data::Rating {
            user: train.users.get(row.user).unwrap_or(u32::MAX),
            item: train.items.get(row.item).unwrap_or(u32::MAX),
            value: row.value,
        });
        Ok(())
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(content: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(content).unwrap();
        f
    }

    fn read_all(content: &[u8], format: Option<Format>) -> Result<Vec<RawRating>, EngineError> {
        let f = file(content);
        RatingsReader::open(f.path(), format)?.collect()
    }

    #[test]
    fn reads_the_three_formats() {
        let tab = read_all(b"1\t10\t4\t881250949\n2\t20\t3\t891717742\n", None).unwrap();
        let dat = read_all(b"1::10::4::881250949\n2::20::3::891717742\n", None).unwrap();
        let csv = read_all(
            b"userId,movieId,rating,timestamp\r\n1,10,4.0,881250949\r\n2,20,3.0,891717742\r\n",
            None,
        )
        .unwrap();
        assert_eq!(tab, dat);
        assert_eq!(tab, csv);
        assert_eq!(tab[1].item, "20");
        assert_eq!(tab[0].timestamp, Some(881250949));
    }

    #[test]
    fn half_stars_and_missing_timestamp() {
        let r = read_all(b"userId,movieId,rating\n7,8,3.5\n", None).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].value, 3.5);
        assert_eq!(r[0].timestamp, None);
    }

    #[test]
    fn errors_name_file_and_line() {
        let f = file(b"1\t2\t3\t4\n1\t2\tx\t4\n");
        let err = RatingsReader::open(f.path(), None)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&f.path().display().to_string()), "{msg}");
        assert!(msg.contains(":2:"), "{msg}");
        assert!(msg.contains("not a number"), "{msg}");
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        for bad in [
            &b"\xff\xfe\t1\t2\n"[..],
            b"1\t2\n",
            b"1\t2\t3\t4\t5\n",
            b"1\t\t3\n",
            b"1\t2\tNaN\n",
            b"1\t2\tinf\n",
            b"1\t2\t3\tnope\n",
            b"just words\n",
        ] {
            assert!(
                read_all(bad, None).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(read_all(b"", None).unwrap().is_empty());
        assert!(read_all(b"\n\n", None).unwrap().is_empty());
    }

    #[test]
    fn dataset_checks_the_scale() {
        let f = file(b"1\t2\t3\n1\t3\t9\n");
        let err = read_dataset(f.path(), None, Default::default()).unwrap_err();
        assert!(err.to_string().contains(":2:"), "{err}");
        let f = file(b"1\t2\t3\n1\t3\t5\n2\t2\t1\n");
        let ds = read_dataset(f.path(), None, Default::default()).unwrap();
        assert_eq!((ds.len(), ds.n_users(), ds.n_items()), (3, 2, 2));
    }

    #[test]
    fn format_can_be_forced() {
        assert!(read_all(b"1,2,3\n", Some(Format::Tab)).is_err());
        assert_eq!(read_all(b"1,2,3\n", Some(Format::Csv)).unwrap().len(), 1);
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        fn id() -> impl Strategy<Value = String> {
            "[A-Za-z0-9_.@éü-]{1,12}"
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]

            /// Any bytes at all: an error or rows, never a panic.
            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300),
                                           fmt in proptest::option::of(prop_oneof![Just(Format::Tab), Just(Format::Dat), Just(Format::Csv)])) {
                let _ = read_all(&bytes, fmt);
            }

            /// Rows written in each format read back exactly.
            #[test]
            fn written_rows_read_back(rows in proptest::collection::vec((id(), id(), 1u8..=10, proptest::option::of(0i64..2_000_000_000)), 1..20),
                                      crlf in any::<bool>()) {
                let eol = if crlf { "\r\n" } else { "\n" };
                for (fmt, sep) in [(Format::Tab, "\t"), (Format::Dat, "::"), (Format::Csv, ",")] {
                    let mut text = String::new();
                    if fmt == Format::Csv {
                        text.push_str("userId,movieId,rating,timestamp");
                        text.push_str(eol);
                    }
                    for (u, i, half, ts) in &rows {
                        let v = *half as f32 / 2.0;
                        let ts = ts.map(|t| format!("{sep}{t}")).unwrap_or_default();
                        text.push_str(&format!("{u}{sep}{i}{sep}{v}{ts}{eol}"));
                    }
                    let got = read_all(text.as_bytes(), Some(fmt)).unwrap();
                    prop_assert_eq!(got.len(), rows.len());
                    for (g, (u, i, half, ts)) in got.iter().zip(&rows) {
                        prop_assert_eq!(&g.user, u);
                        prop_assert_eq!(&g.item, i);
                        prop_assert_eq!(g.value, *half as f32 / 2.0);
                        prop_assert_eq!(g.timestamp, *ts);
                    }
                }
            }
        }
    }
}
