//! `funkrec import`: a ratings file bulk-loaded into the store the server then reads.

use crate::helpers::*;
use std::path::PathBuf;
use std::sync::Arc;
use tempfile::TempDir;

/// A temporary directory, the store directory inside it and a config file that
/// points `funkrec import` there.
fn import_setup() -> (Arc<TempDir>, PathBuf, PathBuf) {
    let tmp = Arc::new(tempfile::tempdir().unwrap());
    let data_dir = tmp.path().join("store");
    let cfg = tmp.path().join("import.toml");
    let toml = format!(
        "[storage]\ndata_dir = {:?}\n",
        data_dir.display().to_string()
    );
    std::fs::write(&cfg, toml).unwrap();
    (tmp, data_dir, cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_then_serve_and_train() {
    let (tmp, data_dir, cfg) = import_setup();
    let file = tmp.path().join("ratings.dat");
    let mut text = String::new();
    for (u, i, r) in planted() {
        text.push_str(&format!("{}::{}::{}::978300760\n", &u[1..], &i[1..], r));
    }
    text.push_str("1::0::9::978300760\n"); // outside the scale: skipped
    text.push_str("1::0::4::978300761\n"); // same pair again: replaces
    std::fs::write(&file, text).unwrap();

    let (f, c) = (file.clone(), cfg.clone());
    tokio::task::spawn_blocking(move || {
        funkrec::commands::import_command(f, Some(funkrec_engine::io::Format::Dat), Some(c))
    })
    .await
    .unwrap()
    .unwrap();

    let app = spawn_app_in(tmp.clone(), |s| s.storage.data_dir = data_dir.clone()).await;
    let (_, p) = app.get_json("/v1/users/1/ratings?limit=1000").await;
    let expected = planted().iter().filter(|(u, _, _)| u == "u1").count();
    assert_eq!(p["total"], expected as u64, "{p}");
    let zero = p["ratings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["item"] == "0");
    // u1 rated i0 with 1 in the planted set; the file's last line replaced it
    assert_eq!(zero.unwrap()["rating"], 4.0);
    assert_eq!(zero.unwrap()["timestamp"], 978300761);
    // the store was imported before start, so the app trains on it at start
    assert_eq!(app.wait_for_version_after(None).await, 1);
    let (_, m) = app.get_json("/v1/model").await;
    assert_eq!(m["counts"]["ratings"], planted().len() as u64);
    app.stop().await;

    // importing again is idempotent (upserts)
    tokio::task::spawn_blocking(move || funkrec::commands::import_command(file, None, Some(cfg)))
        .await
        .unwrap()
        .unwrap();
    let app = spawn_app_in(tmp, |s| s.storage.data_dir = data_dir).await;
    let (_, p) = app.get_json("/v1/users/1/ratings?limit=1000").await;
    assert_eq!(p["total"], expected as u64);
    app.stop().await;
}

/// The store's lock: `funkrec import` is refused at once while a server uses the store
/// (and writes nothing), works once the server has stopped, and a server refuses to
/// start while an import holds the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_and_a_server_never_use_the_store_at_once() {
    use fs4::FileExt;
    let (tmp, data_dir, cfg) = import_setup();
    let file = tmp.path().join("ratings.dat");
    std::fs::write(&file, "1::10::4::978300760\n1::11::2::978300761\n").unwrap();
    let import = || {
        let (f, c) = (file.clone(), cfg.clone());
        tokio::task::spawn_blocking(move || {
            funkrec::commands::import_command(f, Some(funkrec_engine::io::Format::Dat), Some(c))
        })
    };

    // an import holds the lock (exclusive): the server refuses to start
    std::fs::create_dir_all(&data_dir).unwrap();
    let lock = std::fs::File::create(data_dir.join("funkrec.db.lock")).unwrap();
    FileExt::try_lock(&lock).unwrap();
    let refused = funkrec::startup::Application::build(test_settings(&data_dir))
        .await
        .err()
        .expect("no server while an import runs");
    let refused = format!("{refused:#}");
    assert!(
        refused.contains("`funkrec import` is loading ratings into")
            && refused.contains("funkrec.db.lock"),
        "{refused}"
    );
    drop(lock);

    // a server runs: the import is refused and writes nothing
    let app = spawn_app_in(tmp.clone(), |s| s.storage.data_dir = data_dir.clone()).await;
    let refused = format!("{:#}", import().await.unwrap().unwrap_err());
    assert!(
        refused.contains("refusing to import: a running funkrec server uses")
            && refused.contains("funkrec.db.lock"),
        "{refused}"
    );
    let (_, p) = app.get_json("/v1/users/1/ratings").await;
    assert_eq!(p["total"], 0, "{p}");
    app.stop().await;

    // the server has stopped: the import runs and the next server serves its ratings
    import().await.unwrap().unwrap();
    let app = spawn_app_in(tmp, |s| s.storage.data_dir = data_dir).await;
    let (_, p) = app.get_json("/v1/users/1/ratings").await;
    assert_eq!(p["total"], 2, "{p}");
    app.stop().await;
}
