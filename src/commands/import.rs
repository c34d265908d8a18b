//! `funkrec import FILE`: bulk-loads a ratings file into the configured store.

use super::runtime;
use crate::config::Settings;
use crate::domain::{ItemId, RatingValue, UserId};
use crate::store::{ImportRow, Store};
use crate::telemetry;
use funkrec_engine::io::{Format, RatingsReader};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Rows per chunk handed from the reader thread to the database writer.
const CHUNK: usize = 8192;

/// `funkrec import FILE [--format F] [--config FILE]`: bulk-loads a MovieLens
/// or CSV ratings file into the configured store. Rows whose ids or rating the
/// API would refuse are skipped and counted. Parsing runs on its own thread,
/// in parallel with the database writes.
pub fn import_command(
    file: PathBuf,
    format: Option<Format>,
    config_file: Option<PathBuf>,
) -> anyhow::Result<()> {
    let settings = Settings::load(config_file.as_deref())?;
    telemetry::init(&settings.log.level, settings.log.json);
    let mut reader = RatingsReader::open(&file, format)?;
    let total = reader.total_bytes();
    let scale = settings.model.scale;

    let pb = ProgressBar::new(total.max(1));
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg} (eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let bytes = Arc::new(AtomicU64::new(0));
    let skipped = Arc::new(AtomicU64::new(0));
    let first_skip = Arc::new(std::sync::Mutex::new(None::<String>));
    let (tx, rx) = std::sync::mpsc::sync_channel::<anyhow::Result<Vec<ImportRow>>>(8);

    let reader_thread = {
        let (bytes, skipped, first_skip) = (bytes.clone(), skipped.clone(), first_skip.clone());
        std::thread::Builder::new()
            .name("funkrec-import-reader".into())
            .spawn(move || {
                let now = crate::domain::unix_now();
                let mut chunk = Vec::with_capacity(CHUNK);
                let mut n = 0u64;
                while let Some(row) = reader.next() {
                    let row = match row {
                        Ok(r) => r,
                        Err(e) => {
                            let _ = tx.send(Err(e.into()));
                            return;
                        }
                    };
                    n += 1;
                    // the ids as the API would store them (NFC)
                    let valid = UserId::parse(&row.user).and_then(|u| {
                        let i = ItemId::parse(&row.item)?;
                        Ok((u, i, RatingValue::parse(row.value as f64, &scale)?))
                    });
                    match valid {
                        Ok((u, i, v)) => chunk.push(ImportRow {
                            user: u.as_str().to_owned(),
                            item: i.as_str().to_owned(),
                            rating: v.get(),
                            timestamp: row.timestamp.unwrap_or(now),
                        }),
                        Err(e) => {
                            skipped.fetch_add(1, Ordering::Relaxed);
                            first_skip
                                .lock()
                                .unwrap()
                                .get_or_insert_with(|| format!("row {n}: {e}"));
                        }
                    }
                    if chunk.len() == CHUNK {
                        bytes.store(reader.bytes_read(), Ordering::Relaxed);
                        if tx.send(Ok(std::mem::take(&mut chunk))).is_err() {
                            return;
                        }
                        chunk.reserve(CHUNK);
                    }
                }
                bytes.store(reader.bytes_read(), Ordering::Relaxed);
                if !chunk.is_empty() {
                    let _ = tx.send(Ok(chunk));
                }
            })?
    };

    let started = Instant::now();
    let rows = rx
        .into_iter()
        .flat_map(|chunk| -> Vec<anyhow::Result<ImportRow>> {
            match chunk {
                Ok(rows) => rows.into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            }
        });
    let stats = runtime()?.block_on(async {
        let store = Store::connect(&settings).await?;
        let mut progress = |n: u64| {
            pb.set_position(bytes.load(Ordering::Relaxed));
            pb.set_message(format!("{n} ratings"));
        };
        let stats = store.bulk_import(rows, &mut progress).await;
        store.close().await;
        stats
    });
    let _ = reader_thread.join();
    pb.finish_and_clear();
    let stats = stats?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "imported {} ratings ({} new users, {} new items) in {secs:.1} s ({:.0} ratings/s) into {}",
        stats.rows,
        stats.new_users,
        stats.new_items,
        stats.rows as f64 / secs.max(1e-9),
        crate::config::redact_url(&settings.database_url())
    );
    let skipped = skipped.load(Ordering::Relaxed);
    if skipped > 0 {
        eprintln!(
            "skipped {skipped} invalid rows (first: {}); check model.scale if ratings were refused",
            first_skip.lock().unwrap().clone().unwrap_or_default()
        );
    }
    Ok(())
}
