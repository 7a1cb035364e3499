//! The library's runtime, and how its results reach the app's event loop.
//!
//! An async call runs on the library's Tokio runtime; its result is handed to the
//! future the app awaits, and waking that future calls into the app's language (uniffi's
//! continuation callback). Each such call is counted while it runs, so an app can wait
//! for them before its process ends: [`settle`].
//!
//! Why: Python ends any thread that calls into the interpreter while it finalizes, by
//! unwinding the thread (`pthread_exit`). A runtime thread caught inside a callback at
//! that moment would be unwound through Rust frames, and the process would abort at
//! exit. The generated Python module (`scripts/bindings.sh`) registers `settle` to run
//! at exit, before finalization.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::error::SdkError;

/// The library's runtime: the SDK's requests, timers and background refreshes run
/// here, whatever thread or event loop the app calls from.
pub(crate) fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("gateway-sdk")
            .enable_all()
            .build()
            .expect("the SDK's runtime starts")
    })
}

/// Wakes of the app's futures in progress (calls into the app's language).
static WAKING: AtomicUsize = AtomicUsize::new(0);

/// Runs `f` on the library's runtime and waits for it from any executor.
pub(crate) async fn on_rt<T, F>(f: F) -> Result<T, SdkError>
where
    T: Send + 'static,
    F: Future<Output = Result<T, SdkError>> + Send + 'static,
{
    let slot = Arc::new(Mutex::new(Slot::<T> {
        result: None,
        waker: None,
    }));
    let task = rt().spawn(f);
    let filled = slot.clone();
    rt().spawn(async move {
        let result = task.await.unwrap_or_else(|e| {
            Err(SdkError::Internal {
                detail: format!("SDK task failed: {e}"),
                causes: Vec::new(),
                retry_after_ms: None,
            })
        });
        let waker = {
            let mut s = filled.lock().expect("result slot");
            s.result = Some(result);
            s.waker.take()
        };
        if let Some(w) = waker {
            WAKING.fetch_add(1, Ordering::SeqCst);
            w.wake();
            WAKING.fetch_sub(1, Ordering::SeqCst);
        }
    });
    Handoff(slot).await
}

struct Slot<T> {
    result: Option<Result<T, SdkError>>,
    waker: Option<Waker>,
}

/// The app's side of [`on_rt`]: ready once the runtime's task has filled the slot.
struct Handoff<T>(Arc<Mutex<Slot<T>>>);

impl<T> Future for Handoff<T> {
    type Output = Result<T, SdkError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut s = self.0.lock().expect("result slot");
        match s.result.take() {
            Some(r) => Poll::Ready(r),
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Waits, up to `timeout_ms`, until no runtime thread is calling into the app's
/// language to wake one of its futures; true when none is. Python's module calls it at
/// exit; an app that ends its process itself may call it first.
#[uniffi::export]
pub fn settle(timeout_ms: u32) -> bool {
    let deadline = Instant::now() + Duration::from_millis(u64::from(timeout_ms));
    loop {
        if WAKING.load(Ordering::SeqCst) == 0 {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
