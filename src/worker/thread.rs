//! The thread a training run computes on: a fresh OS thread per run, at a lower CPU priority than the request threads.
//!
//! On Linux a nice value belongs to a thread, and threads inherit it from the thread
//! that creates them, so lowering it here also lowers the engine's own training
//! threads (`model.threads`). When training and requests compete for the cores, the
//! scheduler then gives the requests the larger share; when nothing else runs, the
//! training threads still get every idle core. A fresh thread per run means the value
//! never has to be raised again (which needs a privilege): it ends with the thread.

use tokio::sync::oneshot;

/// Runs `f` on a new thread named `funkrec-train` whose nice value is raised by `nice`
/// (0 = unchanged; Linux only, elsewhere ignored), and returns its result.
pub async fn run<T: Send + 'static>(
    nice: i32,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("funkrec-train".into())
        .spawn(move || {
            lower_priority(nice);
            let _ = tx.send(f());
        })?;
    rx.await
        .map_err(|_| anyhow::anyhow!("the training thread panicked"))
}

#[cfg(target_os = "linux")]
fn lower_priority(nice: i32) {
    if nice <= 0 {
        return;
    }
    // SAFETY: getpriority/setpriority read and set the calling thread's nice value (Linux
    // applies PRIO_PROCESS with who = 0 to the calling thread); no memory is shared.
    unsafe {
        let now = libc::getpriority(libc::PRIO_PROCESS, 0);
        if libc::setpriority(libc::PRIO_PROCESS, 0, (now + nice).min(19)) != 0 {
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                "could not lower the training thread's priority"
            );
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority(_nice: i32) {}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    /// The calling thread's nice value.
    fn nice() -> i32 {
        // SAFETY: reads the calling thread's nice value.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
    }

    #[tokio::test]
    async fn the_run_and_the_threads_it_starts_are_niced_and_the_caller_is_not() {
        let before = nice();
        let (run, child) = super::run(5, || {
            let child = std::thread::spawn(nice).join().unwrap();
            (nice(), child)
        })
        .await
        .unwrap();
        assert_eq!(run, (before + 5).min(19));
        assert_eq!(child, run, "threads started by the run inherit it");
        assert_eq!(nice(), before, "the caller's thread is unchanged");
        let plain = super::run(0, nice).await.unwrap();
        assert_eq!(plain, before);
    }

    #[tokio::test]
    async fn a_panicking_run_is_an_error() {
        let r = super::run(0, || -> u32 { panic!("boom") }).await;
        assert!(r.is_err());
    }
}
