//! Streaming readers for rating files: MovieLens 100K (tab), 1M/10M (`::`) and CSV with a header.

use crate::data::Dataset;
use crate::error::EngineError;
use std::fs::File;
use std::io::{BufRead, BufReader, Cursor, Read};
use std::path::{Path, PathBuf};

/// The on-disk layout of a ratings file. On the command line (feature `cli`)
/// also `ml100k`, `tsv`, `udata` for `tab` and `ml1m`, `ml10m` for `dat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Format {
    /// `user<TAB>item<TAB>rating<TAB>timestamp` (MovieLens 100K `u.data`).
    #[cfg_attr(feature = "cli", value(aliases = ["ml100k", "tsv", "udata"]))]
    Tab,
    /// `user::item::rating::timestamp` (MovieLens 1M/10M `ratings.dat`).
    #[cfg_attr(feature = "cli", value(aliases = ["ml1m", "ml10m"]))]
    Dat,
    /// `userId,movieId,rating,timestamp` with a header line (MovieLens "latest").
    Csv,
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

const NOT_UTF8: &str = "line is not valid UTF-8";

/// Parses the fields of one row: user, item, rating and an optional timestamp.
fn parse_fields<'a>(fields: impl Iterator<Item = &'a str>) -> Result<Row<'a>, String> {
    let mut f = [""; 4];
    let mut n = 0;
    for field in fields {
        if let Some(slot) = f.get_mut(n) {
            *slot = field;
        }
        n += 1;
    }
    if !(3..=4).contains(&n) {
        return Err(format!(
            "expected 3 or 4 fields (user, item, rating[, timestamp]), found {n}"
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
    let (user, item) = (f[0].trim(), f[1].trim());
    id("user", user)?;
    id("item", item)?;
    let value: f32 = f[2]
        .trim()
        .parse()
        .map_err(|_| format!("rating {:?} is not a number", f[2]))?;
    if !value.is_finite() {
        return Err(format!("rating {:?} is not finite", f[2]));
    }
    let timestamp = match (n == 4).then(|| f[3].trim()) {
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

/// Parses one line of a tab or `::` file (no line ending).
fn parse_line(format: Format, text: &str) -> Result<Row<'_>, String> {
    match format {
        Format::Dat => parse_fields(text.split("::")),
        Format::Tab | Format::Csv => parse_fields(text.split('\t')),
    }
}

/// Parses one CSV record: its bytes must be UTF-8.
fn parse_record(record: &csv::ByteRecord) -> Result<Row<'_>, String> {
    let text = std::str::from_utf8(record.as_slice()).map_err(|_| NOT_UTF8.to_owned())?;
    // Field boundaries sit next to ASCII delimiters, so they are char boundaries.
    parse_fields((0..record.len()).filter_map(|j| record.range(j).map(|r| &text[r])))
}

type Input = BufReader<CountingReader<Box<dyn Read + Send>>>;

/// Reads a ratings file row by row (one reused buffer, never the whole file):
/// tab and `::` files line by line, CSV through the `csv` crate (comma-separated,
/// optional double quotes with `""` for a quote inside them, CRLF or LF line ends).
pub struct RatingsReader {
    path: PathBuf,
    format: Format,
    /// Line of the row handed out last (1-based, counting every physical line).
    line_no: u64,
    total: u64,
    done: bool,
    source: Source,
}

enum Source {
    /// Tab and `::` files: one line at a time; `pending` when `buf` holds the
    /// first data line, not yet handed out.
    Lines {
        input: Input,
        buf: Vec<u8>,
        pending: bool,
    },
    Csv(Box<CsvSource>),
}

/// CSV: the first non-empty line (read again from memory), then the rest of the input.
struct CsvSource {
    reader: csv::Reader<std::io::Chain<Cursor<Vec<u8>>, Input>>,
    record: csv::ByteRecord,
    /// `record` holds the first data row, not yet handed out.
    pending: bool,
    /// Bytes and lines before the first non-empty line (not seen by `reader`).
    skipped_bytes: u64,
    skipped_lines: u64,
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

fn parse_error(path: &Path, line: u64, message: impl Into<String>) -> EngineError {
    EngineError::Parse {
        path: path.to_owned(),
        line,
        message: message.into(),
    }
}

fn csv_error(path: &Path, line: u64, e: csv::Error) -> EngineError {
    let message = e.to_string();
    match e.into_kind() {
        csv::ErrorKind::Io(e) => EngineError::io(path, e),
        _ => parse_error(path, line, message),
    }
}

/// Reads one line into `buf` (cleared first); false at the end of the input.
fn read_line(input: &mut Input, buf: &mut Vec<u8>, path: &Path) -> Result<bool, EngineError> {
    buf.clear();
    let n = input
        .read_until(b'\n', buf)
        .map_err(|e| EngineError::io(path, e))?;
    Ok(n > 0)
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
        let mut input: Input = BufReader::with_capacity(
            (total as usize).clamp(8 << 10, 1 << 20),
            CountingReader {
                inner: input,
                count: 0,
            },
        );
        // Find the first non-empty line: it fixes the format (unless given).
        let mut buf = Vec::with_capacity(256);
        let (mut lines, mut skipped_bytes) = (0u64, 0u64);
        let mut detected = None;
        while read_line(&mut input, &mut buf, name)? {
            lines += 1;
            let line = trim_eol(&buf);
            if line.iter().all(u8::is_ascii_whitespace) {
                skipped_bytes += buf.len() as u64;
                continue;
            }
            let text = std::str::from_utf8(line).map_err(|_| parse_error(name, lines, NOT_UTF8))?;
            let text = text.strip_prefix('\u{feff}').unwrap_or(text);
            detected = Some(match format {
                Some(f) => f,
                None => Format::detect(text).ok_or_else(|| {
                    parse_error(
                        name,
                        lines,
                        "cannot detect the format (no tab, '::' or ','); use --format",
                    )
                })?,
            });
            break;
        }
        let mut reader = RatingsReader {
            path: name.to_owned(),
            format: detected.or(format).unwrap_or(Format::Tab),
            line_no: lines,
            total,
            done: detected.is_none(),
            source: Source::Lines {
                input,
                buf,
                pending: detected.is_some(),
            },
        };
        if detected == Some(Format::Csv) {
            reader.start_csv(skipped_bytes, lines - 1)?;
        }
        Ok(reader)
    }

    /// Hands the line source over to the CSV reader (the first line, without a
    /// byte-order mark, then the rest) and skips a header: a first record that
    /// does not parse as a row.
    fn start_csv(&mut self, mut skipped_bytes: u64, skipped_lines: u64) -> Result<(), EngineError> {
        let placeholder = Source::Lines {
            input: BufReader::new(CountingReader {
                inner: Box::new(std::io::empty()),
                count: 0,
            }),
            buf: Vec::new(),
            pending: false,
        };
        let Source::Lines { input, mut buf, .. } = std::mem::replace(&mut self.source, placeholder)
        else {
            unreachable!("the reader starts on lines");
        };
        const BOM: &[u8] = "\u{feff}".as_bytes();
        if buf.starts_with(BOM) {
            buf.drain(..BOM.len());
            skipped_bytes += BOM.len() as u64;
        }
        self.source = Source::Csv(Box::new(CsvSource {
            reader: csv::ReaderBuilder::new()
                .has_headers(false)
                .flexible(true)
                .buffer_capacity(64 << 10)
                .from_reader(Cursor::new(buf).chain(input)),
            record: csv::ByteRecord::new(),
            pending: false,
            skipped_bytes,
            skipped_lines,
        }));
        match self.next_row(|_| Ok(())) {
            Ok(Some(())) => {
                if let Source::Csv(s) = &mut self.source {
                    s.pending = true;
                }
                Ok(())
            }
            Ok(None) | Err(EngineError::Parse { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Bytes consumed so far (for progress bars).
    pub fn bytes_read(&self) -> u64 {
        match &self.source {
            Source::Lines { input, .. } => input.get_ref().count - input.buffer().len() as u64,
            Source::Csv(s) => s.skipped_bytes + s.reader.position().byte(),
        }
    }

    /// File size at open time.
    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    /// Parses the next data row and hands it to `f`; `Ok(None)` at the end.
    /// Blank lines are skipped; an error names the file and line.
    fn next_row<T>(
        &mut self,
        f: impl FnOnce(Row<'_>) -> Result<T, EngineError>,
    ) -> Result<Option<T>, EngineError> {
        let path = &self.path;
        while !self.done {
            let row = match &mut self.source {
                Source::Lines {
                    input,
                    buf,
                    pending,
                } => {
                    if std::mem::take(pending) {
                        // The first line, read when the reader was opened.
                    } else if read_line(input, buf, path)? {
                        self.line_no += 1;
                    } else {
                        self.done = true;
                        continue;
                    }
                    let line = trim_eol(buf);
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    std::str::from_utf8(line)
                        .map_err(|_| NOT_UTF8.to_owned())
                        .and_then(|text| parse_line(self.format, text))
                }
                Source::Csv(s) => {
                    if !std::mem::take(&mut s.pending)
                        && !s
                            .reader
                            .read_byte_record(&mut s.record)
                            .map_err(|e| csv_error(path, self.line_no, e))?
                    {
                        self.done = true;
                        continue;
                    }
                    let rec = &s.record;
                    self.line_no = s.skipped_lines + rec.position().map_or(0, |p| p.line());
                    if rec.len() == 1 && rec[0].iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    parse_record(rec)
                }
            };
            return match row {
                Ok(row) => f(row).map(Some),
                Err(m) => Err(parse_error(path, self.line_no, m)),
            };
        }
        Ok(None)
    }

    /// Calls `f` for every row, borrowing ids from the reader's buffer (no allocation per row).
    pub fn for_each_row(
        &mut self,
        mut f: impl FnMut(Row<'_>) -> Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        while self.next_row(&mut f)?.is_some() {}
        Ok(())
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
        let row = self.next_row(|row| {
            Ok(RawRating {
                user: row.user.to_owned(),
                item: row.item.to_owned(),
                value: row.value,
                timestamp: row.timestamp,
            })
        });
        match row {
            Ok(row) => row.map(Ok),
            Err(e) => {
                self.done = true;
                Some(Err(e))
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
    fn csv_reads_quoted_fields() {
        let text = b"\r\nuserId,movieId,rating,timestamp\r\n\
\"u,1\",\"item, with comma\",4.5,881250949\r\n\
\"say \"\"hi\"\"\",plain,3,\r\n\
\r\n\
u2,\"x\",1\r\n";
        let f = file(text);
        let mut reader = RatingsReader::open(f.path(), None).unwrap();
        assert_eq!(reader.format(), Format::Csv);
        let rows: Vec<RawRating> = reader.by_ref().collect::<Result<_, _>>().unwrap();
        assert_eq!(reader.bytes_read(), text.len() as u64);
        assert_eq!(reader.total_bytes(), text.len() as u64);
        assert_eq!(rows.len(), 3);
        assert_eq!(
            (rows[0].user.as_str(), rows[0].item.as_str()),
            ("u,1", "item, with comma")
        );
        assert_eq!((rows[0].value, rows[0].timestamp), (4.5, Some(881250949)));
        assert_eq!(rows[1].user, "say \"hi\"");
        assert_eq!((rows[1].item.as_str(), rows[1].timestamp), ("plain", None));
        assert_eq!((rows[2].user.as_str(), rows[2].item.as_str()), ("u2", "x"));
    }

    #[test]
    fn csv_errors_name_the_physical_line() {
        let content = b"\nuserId,movieId,rating\n\"a,b\",1,2\n\"c\",\"d, e\",x\n";
        let msg = read_all(content, None).unwrap_err().to_string();
        assert!(msg.contains(":4: rating \"x\" is not a number"), "{msg}");
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

            /// CSV ids with commas and quotes, written quoted (`""` for a quote), read back exactly.
            #[test]
            fn quoted_csv_ids_read_back(rows in proptest::collection::vec(("[A-Za-z0-9_,\"é.-]{1,12}", "[A-Za-z0-9_,\"é.-]{1,12}", 1u8..=10), 1..20),
                                        crlf in any::<bool>()) {
                let eol = if crlf { "\r\n" } else { "\n" };
                let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
                let mut text = format!("userId,movieId,rating{eol}");
                for (u, i, half) in &rows {
                    text.push_str(&format!("{},{},{}{eol}", quote(u), quote(i), *half as f32 / 2.0));
                }
                let got = read_all(text.as_bytes(), None).unwrap();
                prop_assert_eq!(got.len(), rows.len());
                for (g, (u, i, half)) in got.iter().zip(&rows) {
                    prop_assert_eq!(&g.user, u);
                    prop_assert_eq!(&g.item, i);
                    prop_assert_eq!(g.value, *half as f32 / 2.0);
                }
            }
        }
    }
}
