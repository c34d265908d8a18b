//! Closed-loop HTTP load generator for `scripts/soak.sh`: `--concurrency` workers, each
//! sending one request at a time for `--duration` seconds — 10 % `POST /v1/ratings`, 90 %
//! reads (45 % predictions, 35 % recommendations, 10 % similar items) over random users and
//! items — timing every request. Midway it asks for a retrain and then checks that the
//! served `model_version` changed. Prints a JSON summary; exits non-zero on any error
//! (transport error or a status other than the expected one) or when no new model was
//! served.
//!
//! Latencies are measured per request from send to the end of the body, client-side, in a
//! closed loop (a slow response delays that worker's next request, so the percentiles
//! describe the service at the throughput it sustained, not at a fixed offered rate).

use clap::Parser;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug, Clone)]
struct Args {
    /// Base URL of the server (loopback).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    base: String,
    #[arg(long, default_value_t = 60)]
    duration: u64,
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Seconds after the start at which `POST /v1/model/train` is sent.
    #[arg(long, default_value_t = 20)]
    train_at: u64,
    /// Users are `1..=users`, items `1..=items` (MovieLens 100K ids by default).
    #[arg(long, default_value_t = 943)]
    users: u32,
    #[arg(long, default_value_t = 1682)]
    items: u32,
    /// Writes go to users `1..=write_users` only (default: all users). With a small
    /// `--write-items` too, the writes keep re-rating the same pairs and the store
    /// stops growing: a soak that tells data growth from a leak.
    #[arg(long)]
    write_users: Option<u32>,
    #[arg(long)]
    write_items: Option<u32>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Default)]
struct Kind {
    lat_us: Vec<u64>,
    errors: u64,
}

const KINDS: [&str; 4] = ["post_rating", "prediction", "recommendations", "similar"];

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i] as f64 / 1000.0
}

async fn model_version(client: &reqwest::Client, base: &str) -> Option<u64> {
    let v: Value = client
        .get(format!("{base}/v1/model"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    v["version"].as_u64()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let version_before = model_version(&client, &args.base).await;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.duration);
    let max_version_seen = Arc::new(AtomicU64::new(version_before.unwrap_or(0)));

    let mut tasks = Vec::new();
    for w in 0..args.concurrency {
        let (client, args, seen) = (client.clone(), args.clone(), max_version_seen.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = ChaCha8Rng::seed_from_u64(args.seed * 1000 + w as u64);
            let mut kinds: Vec<Kind> = (0..KINDS.len()).map(|_| Kind::default()).collect();
            let mut first_errors = Vec::new();
            while Instant::now() < deadline {
                let user = rng.gen_range(1..=args.users);
                let item = rng.gen_range(1..=args.items);
                let roll = rng.gen_range(0..100);
                let (k, req, want) = if roll < 10 {
                    let user = args.write_users.map_or(user, |w| rng.gen_range(1..=w));
                    let item = args.write_items.map_or(item, |w| rng.gen_range(1..=w));
                    let rating = rng.gen_range(1..=10) as f64 / 2.0;
                    let rating = rating.max(1.0);
                    (
                        0,
                        client.post(format!("{}/v1/ratings", args.base)).json(
                            &json!({"user": format!("soak{user}"), "item": item, "rating": rating}),
                        ),
                        201,
                    )
                } else if roll < 55 {
                    (
                        1,
                        client.get(format!("{}/v1/users/{user}/predictions/{item}", args.base)),
                        200,
                    )
                } else if roll < 90 {
                    (
                        2,
                        client.get(format!(
                            "{}/v1/users/{user}/recommendations?n=10",
                            args.base
                        )),
                        200,
                    )
                } else {
                    (
                        3,
                        client.get(format!("{}/v1/items/{item}/similar?n=10", args.base)),
                        200,
                    )
                };
                let t = Instant::now();
                let res = req.send().await;
                let outcome = match res {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        match r.bytes().await {
                            Ok(body) if status == want => {
                                if k == 1 {
                                    if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                                        if let Some(mv) = v["model_version"].as_u64() {
                                            seen.fetch_max(mv, Ordering::Relaxed);
                                        }
                                    }
                                }
                                Ok(())
                            }
                            Ok(body) => Err(format!(
                                "{} answered {status}: {}",
                                KINDS[k],
                                String::from_utf8_lossy(&body)
                            )),
                            Err(e) => Err(format!("{}: reading the body: {e}", KINDS[k])),
                        }
                    }
                    Err(e) => Err(format!("{}: {e}", KINDS[k])),
                };
                let us = t.elapsed().as_micros() as u64;
                kinds[k].lat_us.push(us);
                if let Err(e) = outcome {
                    kinds[k].errors += 1;
                    if first_errors.len() < 5 {
                        first_errors.push(e);
                    }
                }
            }
            (kinds, first_errors)
        }));
    }

    // the retrain mid-run
    let train_at = start + Duration::from_secs(args.train_at.min(args.duration / 2));
    tokio::time::sleep_until(train_at.into()).await;
    let train = client
        .post(format!("{}/v1/model/train", args.base))
        .send()
        .await?;
    let train_status = train.status().as_u16();

    let mut all: Vec<Kind> = (0..KINDS.len()).map(|_| Kind::default()).collect();
    let mut errors_sample = Vec::new();
    for t in tasks {
        let (kinds, errs) = t.await?;
        for (a, k) in all.iter_mut().zip(kinds) {
            a.lat_us.extend(k.lat_us);
            a.errors += k.errors;
        }
        errors_sample.extend(errs);
    }
    let elapsed = start.elapsed().as_secs_f64();
    // the retrain may still be finishing: wait for it (bounded)
    let mut version_after = model_version(&client, &args.base).await;
    let wait_until = Instant::now() + Duration::from_secs(120);
    while version_after == version_before && Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(200)).await;
        version_after = model_version(&client, &args.base).await;
    }

    let mut every: Vec<u64> = Vec::new();
    let mut per_kind = serde_json::Map::new();
    let mut errors = 0;
    for (name, k) in KINDS.iter().zip(all.iter_mut()) {
        k.lat_us.sort_unstable();
        errors += k.errors;
        every.extend_from_slice(&k.lat_us);
        per_kind.insert(
            name.to_string(),
            json!({"requests": k.lat_us.len(), "errors": k.errors,
                   "p50_ms": pct(&k.lat_us, 50.0), "p99_ms": pct(&k.lat_us, 99.0)}),
        );
    }
    every.sort_unstable();
    let requests = every.len();
    let swapped = version_after.is_some() && version_after != version_before;
    let summary = json!({
        "duration_s": (elapsed * 10.0).round() / 10.0,
        "concurrency": args.concurrency,
        "requests": requests,
        "rps": (requests as f64 / elapsed).round(),
        "errors": errors,
        "p50_ms": pct(&every, 50.0),
        "p90_ms": pct(&every, 90.0),
        "p99_ms": pct(&every, 99.0),
        "max_ms": every.last().map(|&u| u as f64 / 1000.0).unwrap_or(0.0),
        "train_request_status": train_status,
        "model_version_before": version_before,
        "model_version_after": version_after,
        "max_model_version_served": max_version_seen.load(Ordering::Relaxed),
        "by_kind": per_kind,
        "first_errors": errors_sample,
    });
    println!("{}", serde_json::to_string_pretty(&summary)?);
    if errors > 0 || train_status != 202 || !swapped {
        anyhow::bail!(
            "soak failed: errors={errors}, train={train_status}, model swapped={swapped}"
        );
    }
    Ok(())
}
