//! Where QUIC runs: on the caller's runtime (tests, benches, many links in one process), or
//! on one thread of its own that sleeps until a packet or a QUIC deadline is due (the
//! daemon on a phone, [`crate::LinkConfig::own_thread`]).
//!
//! An idle link's only work is the keep-alive: one timer, one PING, one ACK. On a
//! multi-threaded runtime each costs more than one wake-up: tokio's timer wheel wakes a
//! worker as a 20 s deadline cascades to finer slots (two or three times), and an arriving
//! packet wakes the endpoint's and the connection's tasks, which wakes a second worker to
//! steal one of them. On its own thread, with a single-threaded runtime whose QUIC timers
//! are `timerfd`s that fire once at their deadline, a keep-alive is one wake-up to send
//! the PING and one to read its ACK; the daemon's workers stay parked.

use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rustix::time::{Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec};
use tokio::io::unix::AsyncFd;

/// The runtime a new endpoint runs on. Should the network thread fail to start, QUIC
/// runs on the caller's runtime: it works the same, only wakes more.
pub(crate) fn runtime(own_thread: bool) -> Arc<dyn quinn::Runtime> {
    match own_thread.then(net_thread).flatten() {
        Some(handle) => Arc::new(OwnThread { handle }),
        None => Arc::new(quinn::TokioRuntime),
    }
}

/// The process's network thread, started on first use; it lives as long as the process
/// (a daemon has one link; its endpoints come and go on it).
fn net_thread() -> Option<tokio::runtime::Handle> {
    static HANDLE: OnceLock<Option<tokio::runtime::Handle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let started = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .and_then(|runtime| {
                    let handle = runtime.handle().clone();
                    std::thread::Builder::new()
                        .name("letstalk-net".into())
                        .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
                    Ok(handle)
                });
            started
                .inspect_err(|e| {
                    tracing::warn!("no network thread, QUIC stays on the runtime: {e}")
                })
                .ok()
        })
        .clone()
}

/// Sleeps until `deadline` on the caller's runtime, waking its thread once, at the
/// deadline: for the few timers of an idle process that are seconds or minutes away (the
/// watchdog), where tokio's timer wheel would wake a worker two or three times as the
/// deadline cascades to finer slots. Falls back to tokio's sleep without a `timerfd`.
pub async fn sleep_until(deadline: Instant) {
    use quinn::AsyncTimer as _;
    match FdTimer::new(deadline) {
        Ok(mut timer) => std::future::poll_fn(|cx| Pin::new(&mut timer).poll(cx)).await,
        Err(_) => tokio::time::sleep_until(deadline.into()).await,
    }
}

/// quinn's tokio runtime, moved onto the network thread, with `timerfd` timers.
#[derive(Debug)]
struct OwnThread {
    handle: tokio::runtime::Handle,
}

impl quinn::Runtime for OwnThread {
    fn new_timer(&self, deadline: Instant) -> Pin<Box<dyn quinn::AsyncTimer>> {
        let _on = self.handle.enter();
        match FdTimer::new(deadline) {
            Ok(timer) => Box::pin(timer),
            // Out of descriptors: tokio's timer wheel still keeps the deadline.
            Err(_) => Box::pin(tokio::time::sleep_until(deadline.into())),
        }
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        self.handle.spawn(future);
    }

    fn wrap_udp_socket(
        &self,
        socket: std::net::UdpSocket,
    ) -> io::Result<Arc<dyn quinn::AsyncUdpSocket>> {
        // Registered with the network thread's reactor, which polls it.
        let _on = self.handle.enter();
        quinn::TokioRuntime.wrap_udp_socket(socket)
    }

    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A one-shot timer that wakes its thread once, at the deadline.
#[derive(Debug)]
struct FdTimer {
    fd: AsyncFd<OwnedFd>,
}

impl FdTimer {
    fn new(deadline: Instant) -> io::Result<Self> {
        let fd = rustix::time::timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        arm(&fd, deadline)?;
        // `AsyncFd::new` is deprecated because an arbitrary `AsRawFd` may close or swap its
        // descriptor while registered; an `OwnedFd` cannot (it is open, and the same one,
        // until dropped with the `AsyncFd`), which is the condition `AsyncFd::register`
        // asks its caller to promise in an `unsafe` block.
        #[allow(deprecated)]
        let fd = AsyncFd::new(fd)?;
        Ok(Self { fd })
    }
}

/// Sets `fd` to expire at `deadline` (at once if it has passed: a zero value would disarm
/// it). Setting it also clears an expiry not read yet.
fn arm(fd: &OwnedFd, deadline: Instant) -> io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_nanos(1));
    let value = Timespec {
        tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: left.subsec_nanos().into(),
    };
    let zero = Timespec { tv_sec: 0, tv_nsec: 0 };
    let spec = Itimerspec { it_interval: zero, it_value: value };
    rustix::time::timerfd_settime(fd, TimerfdTimerFlags::empty(), &spec)?;
    Ok(())
}

impl quinn::AsyncTimer for FdTimer {
    fn reset(self: Pin<&mut Self>, deadline: Instant) {
        if arm(self.fd.get_ref(), deadline).is_err() {
            // Cannot happen for a valid timerfd and value; if it did, the old deadline
            // stands and quinn handles its timeouts when it fires (early, not late, or
            // late by at most the old deadline's distance): nothing is lost.
            tracing::warn!("resetting a QUIC timer failed");
        }
    }

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let mut ready = match self.fd.poll_read_ready(cx) {
                Poll::Ready(Ok(ready)) => ready,
                // The reactor is gone (the process is ending): report expiry, never hang.
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            };
            let mut expirations = [0u8; 8];
            match rustix::io::read(self.fd.get_ref(), &mut expirations) {
                Ok(_) => return Poll::Ready(()),
                // Re-armed since it was last readable: wait for the new deadline.
                Err(rustix::io::Errno::AGAIN) => ready.clear_ready(),
                Err(_) => return Poll::Ready(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quinn::AsyncTimer;

    async fn fired(timer: &mut Pin<Box<dyn AsyncTimer>>) {
        std::future::poll_fn(|cx| timer.as_mut().poll(cx)).await;
    }

    #[tokio::test]
    async fn a_timer_fires_at_its_deadline_and_again_after_a_reset() {
        let start = Instant::now();
        let runtime = runtime(true);
        let mut timer = runtime.new_timer(start + Duration::from_millis(30));
        fired(&mut timer).await;
        assert!(start.elapsed() >= Duration::from_millis(30), "{:?}", start.elapsed());

        // Reset later, then earlier before it fires: the earlier deadline holds.
        let again = Instant::now();
        timer.as_mut().reset(again + Duration::from_secs(60));
        timer.as_mut().reset(again + Duration::from_millis(20));
        fired(&mut timer).await;
        let took = again.elapsed();
        assert!(took >= Duration::from_millis(20) && took < Duration::from_secs(30), "{took:?}");

        // A deadline already past fires at once (a zero value would disarm the timerfd).
        timer.as_mut().reset(Instant::now() - Duration::from_millis(5));
        tokio::time::timeout(Duration::from_secs(5), fired(&mut timer)).await.unwrap();
    }

    #[tokio::test]
    async fn a_timer_does_not_fire_before_its_deadline() {
        let runtime = runtime(true);
        let mut timer = runtime.new_timer(Instant::now() + Duration::from_millis(300));
        let early = tokio::time::timeout(Duration::from_millis(100), fired(&mut timer)).await;
        assert!(early.is_err(), "fired 200 ms early");
        tokio::time::timeout(Duration::from_secs(5), fired(&mut timer)).await.unwrap();
    }
}
