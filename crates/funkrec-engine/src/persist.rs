//! Versioned, checksummed binary model files (write to temp, fsync, rename).

use crate::data::IdMap;
use crate::error::EngineError;
use crate::model::{Model, TrainReport};
use crate::params::Hyper;
use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::Path;

/// First 8 bytes of every model file.
pub const MAGIC: &[u8; 8] = b"FUNKREC\0";
/// Bumped whenever the layout changes. Version 2 added the `svdpp` implicit factors
/// (a header flag and, when set, Y after the item sums); version 1 files still load.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest version [`from_bytes`] still reads.
pub const OLDEST_READABLE: u32 = 1;

/// JSON header: everything but the arrays.
#[derive(Serialize, Deserialize)]
struct Header {
    hyper: Hyper,
    report: TrainReport,
    global_mean: f32,
    n_users: u64,
    n_items: u64,
    factors: u64,
    /// Whether Y (items × factors) follows the item sums (version 2; absent in 1).
    #[serde(default)]
    implicit: bool,
}

fn put_u32(buf: &mut Vec<u8>, v: u32) {
    buf.extend_from_slice(&v.to_le_bytes());
}

fn put_f32s(buf: &mut Vec<u8>, xs: impl IntoIterator<Item = f32>) {
    for x in xs {
        buf.extend_from_slice(&x.to_le_bytes());
    }
}

fn put_ids(buf: &mut Vec<u8>, ids: &IdMap) {
    for id in ids.ids() {
        put_u32(buf, id.len() as u32);
        buf.extend_from_slice(id.as_bytes());
    }
}

/// Exact size of [`to_bytes`]' output, so its buffer is allocated once: a
/// growing `Vec` would reallocate to twice the model's size on the last bytes.
fn encoded_len(model: &Model, header_len: usize) -> usize {
    let ids = |m: &IdMap| m.ids().iter().map(|id| 4 + id.len()).sum::<usize>();
    let (nu, ni, k) = (model.n_users(), model.n_items(), model.factors());
    let framing = MAGIC.len() + 4 + 4 + header_len + 4; // magic, version, header, CRC
    let arrays = 4 * (nu + ni) * (1 + k) + (4 + 8) * ni; // biases, factors, item counts and sums
    let implicit = model.implicit.as_ref().map_or(0, |y| 4 * y.len());
    framing + implicit + ids(&model.users) + ids(&model.items) + arrays
}

/// Serialises a model: magic, version, header length, JSON header, arrays, CRC32.
pub fn to_bytes(model: &Model) -> Vec<u8> {
    let header = Header {
        hyper: model.hyper.clone(),
        report: model.report.clone(),
        global_mean: model.global_mean,
        n_users: model.n_users() as u64,
        n_items: model.n_items() as u64,
        factors: model.factors() as u64,
        implicit: model.implicit.is_some(),
    };
    let header = serde_json::to_vec(&header).expect("header serialises");
    let mut buf = Vec::with_capacity(encoded_len(model, header.len()));
    buf.extend_from_slice(MAGIC);
    put_u32(&mut buf, FORMAT_VERSION);
    put_u32(&mut buf, header.len() as u32);
    buf.extend_from_slice(&header);
    put_ids(&mut buf, &model.users);
    put_ids(&mut buf, &model.items);
    put_f32s(&mut buf, model.user_bias.iter().copied());
    put_f32s(&mut buf, model.item_bias.iter().copied());
    put_f32s(&mut buf, model.user_factors.iter().copied());
    put_f32s(&mut buf, model.item_factors.iter().copied());
    for &c in &model.item_counts {
        put_u32(&mut buf, c);
    }
    for &s in &model.item_sums {
        buf.extend_from_slice(&s.to_le_bytes());
    }
    if let Some(y) = &model.implicit {
        put_f32s(&mut buf, y.iter().copied());
    }
    let crc = crc32fast::hash(&buf);
    put_u32(&mut buf, crc);
    buf
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or("truncated")?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn f32s(&mut self, n: usize) -> Result<Vec<f32>, String> {
        let bytes = self.take(n.checked_mul(4).ok_or("size overflow")?)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect())
    }
    fn ids(&mut self, n: usize) -> Result<IdMap, String> {
        let mut ids = Vec::with_capacity(n.min(self.buf.len()));
        for _ in 0..n {
            let len = self.u32()? as usize;
            let s = std::str::from_utf8(self.take(len)?).map_err(|_| "id is not UTF-8")?;
            ids.push(s.to_owned());
        }
        IdMap::from_ids(ids)
    }
}

/// Parses and verifies bytes written by [`to_bytes`].
pub fn from_bytes(buf: &[u8]) -> Result<Model, String> {
    if buf.len() < MAGIC.len() + 12 {
        return Err("truncated".into());
    }
    if &buf[..8] != MAGIC {
        return Err("not a funkrec model file (bad magic)".into());
    }
    let (body, crc) = buf.split_at(buf.len() - 4);
    let stored = u32::from_le_bytes(crc.try_into().unwrap());
    if crc32fast::hash(body) != stored {
        return Err("checksum mismatch (truncated or corrupted)".into());
    }
    let mut c = Cursor { buf: body, pos: 8 };
    let version = c.u32()?;
    if !(OLDEST_READABLE..=FORMAT_VERSION).contains(&version) {
        return Err(format!(
            "format version {version}, this build reads {OLDEST_READABLE}..={FORMAT_VERSION}"
        ));
    }
    let hlen = c.u32()? as usize;
    let header: Header =
        serde_json::from_slice(c.take(hlen)?).map_err(|e| format!("bad header: {e}"))?;
    let (nu, ni, k) = (
        header.n_users as usize,
        header.n_items as usize,
        header.factors as usize,
    );
    if k != header.hyper.factors {
        return Err("factor count disagrees with hyperparameters".into());
    }
    if header.implicit && version < 2 {
        return Err(format!("implicit factors in a version {version} file"));
    }
    let users = c.ids(nu)?;
    let items = c.ids(ni)?;
    let user_bias = Array1::from(c.f32s(nu)?);
    let item_bias = Array1::from(c.f32s(ni)?);
    let overflow = || "size overflow".to_string();
    let user_factors =
        Array2::from_shape_vec((nu, k), c.f32s(nu.checked_mul(k).ok_or_else(overflow)?)?)
            .map_err(|e| e.to_string())?;
    let item_factors =
        Array2::from_shape_vec((ni, k), c.f32s(ni.checked_mul(k).ok_or_else(overflow)?)?)
            .map_err(|e| e.to_string())?;
    let mut item_counts = Vec::with_capacity(ni);
    for _ in 0..ni {
        item_counts.push(c.u32()?);
    }
    let mut item_sums = Vec::with_capacity(ni);
    for _ in 0..ni {
        item_sums.push(f64::from_le_bytes(c.take(8)?.try_into().unwrap()));
    }
    let implicit = match header.implicit {
        true => Some(
            Array2::from_shape_vec((ni, k), c.f32s(ni.checked_mul(k).ok_or_else(overflow)?)?)
                .map_err(|e| e.to_string())?,
        ),
        false => None,
    };
    if c.pos != body.len() {
        return Err("trailing bytes".into());
    }
    Ok(Model {
        hyper: header.hyper,
        users,
        items,
        global_mean: header.global_mean,
        user_bias,
        item_bias,
        user_factors,
        item_factors,
        implicit,
        item_counts,
        item_sums,
        report: header.report,
    })
}

/// Writes atomically: a temp file beside `path`, fsync, rename, fsync the directory.
pub fn save(model: &Model, path: &Path) -> Result<(), EngineError> {
    let bytes = to_bytes(model);
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    let tmp = path.with_extension("tmp");
    let written = (|| {
        let io = |e| EngineError::io(&tmp, e);
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        fs::rename(&tmp, path).map_err(|e| EngineError::io(path, e))
    })();
    if let Err(e) = written {
        // a full disk must not also keep the partial file
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if let Some(dir) = dir {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Reads and verifies a model file.
pub fn load(path: &Path) -> Result<Model, EngineError> {
    let mut buf = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut buf))
        .map_err(|e| EngineError::io(path, e))?;
    from_bytes(&buf).map_err(|message| EngineError::ModelFile {
        path: path.to_owned(),
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Model {
        let users = IdMap::from_ids(vec!["u1".into(), "ü2".into()]).unwrap();
        let items = IdMap::from_ids(vec!["a".into(), "b".into(), "c".into()]).unwrap();
        let hyper = Hyper {
            factors: 2,
            ..Hyper::default()
        };
        let mut m = Model::zeros(hyper, users, items, 3.5);
        m.user_factors[[1, 1]] = 0.25;
        m.item_factors[[2, 0]] = -1.5;
        m.item_bias[1] = 0.3;
        m.item_counts[2] = 7;
        m.item_sums[2] = 21.0;
        m
    }

    #[test]
    fn roundtrip_is_exact() {
        let m = sample();
        assert_eq!(from_bytes(&to_bytes(&m)).unwrap(), m);
    }

    /// An `svdpp` model: user rows are effective vectors, Y rides along.
    fn sample_svdpp() -> Model {
        let mut m = sample();
        m.hyper.trainer = crate::params::TrainerKind::Svdpp;
        let mut y = Array2::zeros((3, 2));
        y[[0, 1]] = 0.75;
        y[[2, 0]] = -0.125;
        m.implicit = Some(y);
        m
    }

    #[test]
    fn svdpp_roundtrip_is_exact_and_keeps_y() {
        let m = sample_svdpp();
        let back = from_bytes(&to_bytes(&m)).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.implicit.as_ref().unwrap()[[0, 1]], 0.75);
        // without Y the file is 3 × 2 floats shorter (and its header says `false`,
        // one byte longer than `true`)
        let mut no_y = m.clone();
        no_y.implicit = None;
        assert_eq!(to_bytes(&m).len() - to_bytes(&no_y).len(), 4 * 6 - 1);
    }

    /// A version 1 file, written by the code before the format carried Y (commit
    /// 9312843): `funkrec train --data tiny.data --out model-v1.bin --factors 2
    /// --epochs 3` on the ratings listed in `tests/fixtures/README.md`. It still loads,
    /// as a model without implicit factors, and saves again as the current version.
    #[test]
    fn a_version_1_file_still_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/model-v1.bin");
        let bytes = fs::read(&path).unwrap();
        assert_eq!(
            &bytes[8..12],
            &1u32.to_le_bytes(),
            "the fixture is version 1"
        );
        let m = load(&path).unwrap();
        assert!(m.implicit.is_none());
        assert_eq!(m.hyper.trainer, crate::params::TrainerKind::Sgd);
        assert_eq!((m.n_users(), m.n_items(), m.factors()), (3, 4, 2));
        assert_eq!(m.users.get("alice"), Some(0));
        assert_eq!(m.report.epochs.len(), 3);
        let p = m.predict("alice", "matrix");
        assert!(p.known_user && p.known_item && (1.0..=5.0).contains(&p.rating));
        let again = to_bytes(&m);
        assert_eq!(&again[8..12], &FORMAT_VERSION.to_le_bytes());
        assert_eq!(from_bytes(&again).unwrap(), m);
        // an unknown (newer) version is refused with its number
        let mut v3 = bytes.clone();
        v3[8..12].copy_from_slice(&99u32.to_le_bytes());
        let body = v3.len() - 4;
        let crc = crc32fast::hash(&v3[..body]);
        v3[body..].copy_from_slice(&crc.to_le_bytes());
        assert!(from_bytes(&v3).unwrap_err().contains("format version 99"));
    }

    #[test]
    fn buffer_is_allocated_once() {
        let bytes = to_bytes(&sample());
        assert_eq!(bytes.capacity(), bytes.len());
        let bytes = to_bytes(&sample_svdpp());
        assert_eq!(bytes.capacity(), bytes.len());
    }

    #[test]
    fn every_truncation_and_bitflip_is_detected() {
        let bytes = to_bytes(&sample_svdpp());
        for cut in 0..bytes.len() {
            assert!(from_bytes(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for pos in 0..bytes.len() {
            let mut b = bytes.clone();
            b[pos] ^= 0x10;
            assert!(from_bytes(&b).is_err(), "flip at {pos}");
        }
    }

    #[test]
    fn save_then_load_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.fkm");
        save(&sample(), &path).unwrap();
        assert_eq!(load(&path).unwrap(), sample());
        assert!(!path.with_extension("tmp").exists());
    }

    #[test]
    fn a_failed_save_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        // the target is a non-empty directory: the final rename fails after the write
        let path = dir.path().join("m.fkm");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("x"), b"x").unwrap();
        assert!(save(&sample(), &path).is_err());
        assert!(
            !path.with_extension("tmp").exists(),
            "temp file left behind"
        );
    }
}
