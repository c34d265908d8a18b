//! Entry points the CLI calls: `serve`, `import` and the container `healthcheck`.

use crate::config::Settings;
use crate::domain::{ItemId, RatingValue, UserId};
use crate::malloc;
use crate::startup::Application;
use crate::store::{ImportRow, Store};
use crate::telemetry;
use anyhow::{bail, Context};
use funkrec_engine::io::{Format, RatingsReader};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("funkrec-rt")
        .build()
        .context("starting the async runtime")
}

/// `funkrec serve [--config FILE]` (also: `funkrec` with no subcommand).
pub fn serve_command(config_file: Option<PathBuf>) -> anyhow::Result<()> {
    let settings = Settings::load(config_file.as_deref())?;
    telemetry::init(&settings.log.level, settings.log.json);
    malloc::tune();
    runtime()?.block_on(async {
        let app = Application::build(settings).await?;
        app.run_until_stopped().await
    })
}

/// Rows per chunk handed from the reader thread to the database writer.
const CHUNK: usize = 8192;

/// `funkrec import FILE [--format F] [--config FILE]`: bulk-loads a MovieLens
/// or CSV ratings file into the configured store. Rows whose ids or rating the
/// API would refuse are skipped and counted. Parsing runs on its own thread,
/// in parallel with the database writes.
pub fn import_command(
    file: PathBuf,
    format: Option<String>,
    config_file: Option<PathBuf>,
) -> anyhow::Result<()> {
    let settings = Settings::load(config_file.as_deref())?;
    telemetry::init(&settings.log.level, settings.log.json);
    let format: Option<Format> = format
        .map(|f| f.parse().map_err(anyhow::Error::msg))
        .transpose()?;
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
                    let valid = UserId::parse(&row.user)
                        .and_then(|_| ItemId::parse(&row.item))
                        .and_then(|_| RatingValue::parse(row.value as f64, &scale));
                    match valid {
                        Ok(v) => chunk.push(ImportRow {
                            user: row.user,
                            item: row.item,
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
        settings.database_url()
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

/// `funkrec healthcheck [URL] [--config FILE]`: GET `URL`, by default the
/// configured server's `/healthz` (`server.bind`, with 0.0.0.0/:: probed on
/// loopback), with plain HTTP/1.0 over a TCP socket; Ok only for a 2xx answer.
/// For the container HEALTHCHECK (the runtime image has no curl).
pub fn healthcheck_command(
    url: Option<String>,
    config_file: Option<PathBuf>,
) -> anyhow::Result<()> {
    let url = match url {
        Some(u) => u,
        None => healthz_url(&Settings::load(config_file.as_deref())?.server.bind)?,
    };
    probe(&url)
}

/// `http://HOST:PORT/healthz` for a bind address; wildcard hosts become loopback.
pub fn healthz_url(bind: &str) -> anyhow::Result<String> {
    let addr: std::net::SocketAddr = bind
        .parse()
        .with_context(|| format!("server.bind {bind:?} is not HOST:PORT"))?;
    let host = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_string(),
        ip if ip.is_unspecified() => "[::1]".to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    Ok(format!("http://{host}:{}/healthz", addr.port()))
}

/// One HTTP/1.0 GET; Ok for a 2xx status.
fn probe(url: &str) -> anyhow::Result<()> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("only http:// URLs are supported, got {url:?}"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let hostport = if hostport
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        hostport.to_owned()
    } else {
        format!("{hostport}:80")
    };
    let addr = hostport
        .to_socket_addrs()?
        .next()
        .with_context(|| format!("cannot resolve {hostport}"))?;
    let timeout = Duration::from_secs(3);
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {hostport}\r\n\r\n")?;
    let mut resp = Vec::new();
    s.take(64 * 1024).read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp);
    let status_line = text.lines().next().unwrap_or("");
    let code: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no HTTP status in answer {status_line:?}"))?;
    if !(200..300).contains(&code) {
        bail!("{url} answered {status_line}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthz_url_from_bind() {
        assert_eq!(
            healthz_url("0.0.0.0:8080").unwrap(),
            "http://127.0.0.1:8080/healthz"
        );
        assert_eq!(
            healthz_url("127.0.0.1:9").unwrap(),
            "http://127.0.0.1:9/healthz"
        );
        assert_eq!(healthz_url("[::]:80").unwrap(), "http://[::1]:80/healthz");
        assert!(healthz_url("localhost").is_err());
    }

    #[test]
    fn probe_refuses_other_schemes_and_closed_ports() {
        assert!(probe("https://127.0.0.1:1/healthz").is_err());
        // port 1 on loopback: nothing listens there
        assert!(probe("http://127.0.0.1:1/healthz").is_err());
    }
}
