//! Keys never reach the logs: everything the service logs at TRACE level while
//! serving keyed requests is captured and searched.
//!
//! Its own test binary on purpose: a thread-local tracing subscriber does not
//! reliably see every event while other tests run in the same process (callsite
//! interest is global), so this is the only test here.

use axum::body::Body;
use axum::http::Request;
use funkrec::auth::ApiKeys;
use funkrec::config::Settings;
use funkrec::startup::Application;
use std::sync::{Arc, Mutex};
use tower::ServiceExt;

const ADMIN: &str = "admin-key-aaaaaaaaaaaaaaaa";
const WRITER: &str = "write-key-bbbbbbbbbbbbbbbb";
const READER: &str = "read-key-cccccccccccccccc";

fn keys() -> ApiKeys {
    ApiKeys::parse_all([
        format!("admin:{ADMIN}").as_str(),
        &format!("write:{WRITER}"),
        &format!("read:{READER}"),
    ])
    .unwrap()
}

/// A `MakeWriter` that appends every log line to a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Everything the service logs at TRACE level while serving keyed requests
/// (accepted, refused, wrong role) never contains a key; the role is logged.
#[test]
fn keys_never_reach_the_logs() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = Settings::default();
        s.server.bind = "127.0.0.1:0".into();
        s.storage.data_dir = tmp.path().to_path_buf();
        s.auth.keys = keys();
        tracing::info!(settings = ?s, "settings as a careless caller would log them");
        let app = Application::build(s).await.unwrap();
        let router = app.router();
        for (method, path, key) in [
            ("GET", "/v1/users/u1/ratings", READER),
            ("POST", "/v1/model/train", WRITER),
            ("POST", "/v1/model/train", ADMIN),
            ("GET", "/v1/model", "wrong-key-dddddddddddddddddd"),
        ] {
            let res = router
                .clone()
                .oneshot(
                    Request::builder()
                        .method(method)
                        .uri(path)
                        .header("authorization", format!("Bearer {key}"))
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            assert!(res.status().as_u16() < 500);
        }
    });
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("role=read") && text.contains("role=admin"),
        "{text}"
    );
    for key in [ADMIN, WRITER, READER, "wrong-key-ddd"] {
        assert!(!text.contains(key), "key {key} in the logs:\n{text}");
    }
}
