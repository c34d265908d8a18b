//! The trainer's full read on PostgreSQL: one repeatable-read transaction, the ratings streamed by binary `COPY .. TO STDOUT` straight into the result.

use crate::store::{ScanSnapshot, TrainingRows};
use anyhow::{bail, Context};
use futures_util::TryStreamExt;
use sqlx::PgPool;

/// Binary COPY signature, flags and header-extension length (PostgreSQL's
/// "COPY file formats"): 11 + 4 + 4 bytes before the first tuple.
const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
const HEADER: usize = 19;
/// One tuple: field count (i16 = 3), then three (i32 length = 4, 4-byte value).
const TUPLE: usize = 2 + 3 * 8;

/// Reads users, items and every rating (ordered by user key, item key) as one
/// consistent snapshot. The ratings arrive as binary COPY data and are decoded chunk
/// by chunk into the result vector, sized up front from the table's statistics, so
/// they are held once.
///
/// With `record_snapshot`, the transaction's snapshot (taken by its first query, so it
/// is the one every row was read in) is returned with the rows: a change committed by
/// a transaction that is not visible in it is missing from them
/// (`PgStore::changed_since`).
pub(super) async fn training_rows(
    pool: &PgPool,
    record_snapshot: bool,
) -> anyhow::Result<TrainingRows> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    // The first query of a repeatable-read transaction fixes its snapshot.
    let snapshot: String = sqlx::query_scalar("SELECT pg_current_snapshot()::text")
        .fetch_one(&mut *tx)
        .await?;
    let users: Vec<(i64, String)> = sqlx::query_as("SELECT id, ext_id FROM users ORDER BY id")
        .fetch_all(&mut *tx)
        .await?;
    let items: Vec<(i64, String)> = sqlx::query_as("SELECT id, ext_id FROM items ORDER BY id")
        .fetch_all(&mut *tx)
        .await?;
    let estimate: f32 =
        sqlx::query_scalar("SELECT reltuples FROM pg_class WHERE oid = 'ratings'::regclass")
            .fetch_one(&mut *tx)
            .await?;
    let mut decoder = Decoder::new((estimate.max(0.0) as f64 * 1.02) as usize);
    {
        let mut stream = tx
            .copy_out_raw(
                "COPY (SELECT user_id::int4, item_id::int4, rating::float4 FROM ratings \
                 ORDER BY user_id, item_id) TO STDOUT (FORMAT binary)",
            )
            .await?;
        while let Some(chunk) = stream.try_next().await? {
            decoder.feed(&chunk)?;
        }
    }
    tx.rollback().await?;
    let mut ratings = decoder.finish()?;
    ratings.shrink_to_fit();
    Ok(TrainingRows {
        users,
        items,
        ratings,
        snapshot: record_snapshot.then_some(ScanSnapshot(snapshot)),
    })
}

/// Decodes binary COPY data of (int4, int4, float4) tuples arriving in arbitrary
/// chunks.
struct Decoder {
    header_done: bool,
    /// Bytes of an incomplete header or tuple carried to the next chunk.
    carry: Vec<u8>,
    ratings: Vec<(u32, u32, f32)>,
    ended: bool,
}

impl Decoder {
    fn new(capacity: usize) -> Decoder {
        Decoder {
            header_done: false,
            carry: Vec::new(),
            ratings: Vec::with_capacity(capacity),
            ended: false,
        }
    }

    fn feed(&mut self, chunk: &[u8]) -> anyhow::Result<()> {
        if self.carry.is_empty() {
            let used = self.parse(chunk)?;
            self.carry.extend_from_slice(&chunk[used..]);
        } else {
            let mut data = std::mem::take(&mut self.carry);
            data.extend_from_slice(chunk);
            let used = self.parse(&data)?;
            data.drain(..used);
            self.carry = data;
        }
        Ok(())
    }

    /// Parses what it can; returns the bytes used.
    fn parse(&mut self, data: &[u8]) -> anyhow::Result<usize> {
        let mut at = 0;
        if !self.header_done {
            if data.len() < HEADER {
                return Ok(0);
            }
            if &data[..SIGNATURE.len()] != SIGNATURE {
                bail!("not binary COPY data");
            }
            let ext = u32::from_be_bytes(data[15..19].try_into()?) as usize;
            if data.len() < HEADER + ext {
                return Ok(0);
            }
            at = HEADER + ext;
            self.header_done = true;
        }
        while at + 2 <= data.len() && !self.ended {
            let fields = i16::from_be_bytes([data[at], data[at + 1]]);
            if fields == -1 {
                self.ended = true;
                at += 2;
                break;
            }
            if fields != 3 {
                bail!("unexpected COPY tuple of {fields} fields");
            }
            if at + TUPLE > data.len() {
                break;
            }
            let t = &data[at + 2..at + TUPLE];
            let field = |k: usize| -> anyhow::Result<[u8; 4]> {
                let len = i32::from_be_bytes(t[k * 8..k * 8 + 4].try_into()?);
                if len != 4 {
                    bail!("unexpected COPY field length {len} (a NULL?)");
                }
                Ok(t[k * 8 + 4..k * 8 + 8].try_into()?)
            };
            let u = i32::from_be_bytes(field(0)?);
            let i = i32::from_be_bytes(field(1)?);
            let r = f32::from_be_bytes(field(2)?);
            let key = |k: i32| u32::try_from(k).with_context(|| format!("key {k} out of range"));
            self.ratings.push((key(u)?, key(i)?, r));
            at += TUPLE;
        }
        Ok(at)
    }

    fn finish(self) -> anyhow::Result<Vec<(u32, u32, f32)>> {
        if !self.ended || !self.carry.is_empty() {
            bail!("COPY data ended early");
        }
        Ok(self.ratings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(u: i32, i: i32, r: f32) -> Vec<u8> {
        let mut v = 3i16.to_be_bytes().to_vec();
        for b in [u.to_be_bytes(), i.to_be_bytes(), r.to_be_bytes()] {
            v.extend_from_slice(&4i32.to_be_bytes());
            v.extend_from_slice(&b);
        }
        v
    }

    #[test]
    fn decodes_tuples_split_anywhere() {
        let mut data = SIGNATURE.to_vec();
        data.extend_from_slice(&0u32.to_be_bytes());
        data.extend_from_slice(&0u32.to_be_bytes());
        let want = [(1, 2, 3.5f32), (1, 7, 1.0), (9, 2, 5.0)];
        for &(u, i, r) in &want {
            data.extend(tuple(u, i, r));
        }
        data.extend_from_slice(&(-1i16).to_be_bytes());
        for step in [1, 3, 7, 26, 1000] {
            let mut d = Decoder::new(0);
            for chunk in data.chunks(step) {
                d.feed(chunk).unwrap();
            }
            let got = d.finish().unwrap();
            let want: Vec<(u32, u32, f32)> = want
                .iter()
                .map(|&(u, i, r)| (u as u32, i as u32, r))
                .collect();
            assert_eq!(got, want, "chunks of {step}");
        }
        let mut d = Decoder::new(0);
        d.feed(&data[..data.len() - 2]).unwrap();
        assert!(d.finish().is_err(), "a missing trailer is an error");
    }
}
