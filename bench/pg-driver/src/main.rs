//! sqlx-postgres vs tokio-postgres: batch insert (UNNEST, 1,000-row batches) and full scan of 1M rows.
use futures_util::{pin_mut, StreamExt, TryStreamExt};
use sqlx::{Connection, Row};
use std::time::Instant;

const N: i32 = 1_000_000;
const BATCH: i32 = 1_000;
const INSERT: &str = "INSERT INTO t (u, i, r) SELECT * FROM unnest($1::int4[], $2::int4[], $3::float4[]) \
    ON CONFLICT (u, i) DO UPDATE SET r = excluded.r";

fn batch(b: i32) -> (Vec<i32>, Vec<i32>, Vec<f32>) {
    let us: Vec<i32> = (0..BATCH).map(|k| (b * BATCH + k) / 100).collect();
    let is: Vec<i32> = (0..BATCH).map(|k| (b * BATCH + k) % 100 * 37).collect();
    let rs: Vec<f32> = (0..BATCH).map(|k| (k % 5) as f32 + 1.0).collect();
    (us, is, rs)
}

async fn sqlx_run(url: &str) -> (f64, f64) {
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query("TRUNCATE t").execute(&mut c).await.unwrap();
    let t = Instant::now();
    for b in 0..N / BATCH {
        let (us, is, rs) = batch(b);
        sqlx::query(INSERT).bind(&us).bind(&is).bind(&rs).execute(&mut c).await.unwrap();
    }
    let ins = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut sum = 0f64;
    {
        let mut rows = sqlx::query("SELECT u, i, r FROM t ORDER BY u, i").fetch(&mut c);
        while let Some(row) = rows.try_next().await.unwrap() {
            let (u, i, r): (i32, i32, f32) = (row.get(0), row.get(1), row.get(2));
            sum += (u + i) as f64 + r as f64;
        }
    }
    assert!(sum > 0.0);
    (ins, t.elapsed().as_secs_f64())
}

async fn tp_run(url: &str) -> (f64, f64) {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    c.execute("TRUNCATE t", &[]).await.unwrap();
    let stmt = c.prepare(INSERT).await.unwrap();
    let t = Instant::now();
    for b in 0..N / BATCH {
        let (us, is, rs) = batch(b);
        c.execute(&stmt, &[&us, &is, &rs]).await.unwrap();
    }
    let ins = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut sum = 0f64;
    let rows = c.query_raw("SELECT u, i, r FROM t ORDER BY u, i", std::iter::empty::<i32>()).await.unwrap();
    pin_mut!(rows);
    while let Some(row) = rows.next().await {
        let row = row.unwrap();
        let (u, i, r): (i32, i32, f32) = (row.get(0), row.get(1), row.get(2));
        sum += (u + i) as f64 + r as f64;
    }
    assert!(sum > 0.0);
    (ins, t.elapsed().as_secs_f64())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let url = std::env::var("PG_URL").unwrap_or("postgres://postgres@127.0.0.1:5432/pgbench".into());
    let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("CREATE TABLE IF NOT EXISTS t (u int4, i int4, r float4, PRIMARY KEY (u, i))").execute(&mut c).await.unwrap();
    let (mut s_ins, mut s_scan, mut t_ins, mut t_scan) = (vec![], vec![], vec![], vec![]);
    for rep in 0..3 {
        let (a, b) = sqlx_run(&url).await;
        let (x, y) = tp_run(&url).await;
        println!("rep {rep}: sqlx insert {a:.2}s scan {b:.2}s | tokio-postgres insert {x:.2}s scan {y:.2}s");
        s_ins.push(a); s_scan.push(b); t_ins.push(x); t_scan.push(y);
    }
    let med = |v: &mut Vec<f64>| { v.sort_by(|a, b| a.partial_cmp(b).unwrap()); v[v.len() / 2] };
    println!("median (1M rows): sqlx insert {:.2}s ({:.0} rows/s), scan {:.2}s ({:.0} rows/s)", med(&mut s_ins), N as f64 / med(&mut s_ins), med(&mut s_scan), N as f64 / med(&mut s_scan));
    println!("median (1M rows): tokio-postgres insert {:.2}s ({:.0} rows/s), scan {:.2}s ({:.0} rows/s)", med(&mut t_ins), N as f64 / med(&mut t_ins), med(&mut t_scan), N as f64 / med(&mut t_scan));
    sqlx::query("DROP TABLE t").execute(&mut c).await.unwrap();
}
