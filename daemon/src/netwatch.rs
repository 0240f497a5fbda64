//! Watches the device's network: the kernel's routing netlink (links, addresses,
//! routes) wakes it; after a short quiet period (a switch is a burst of messages) it
//! reads the network again, and when the network changed (another type or another
//! interface carries the default route) it records it for diagnostics, emits
//! `network.changed`, and tells the relay link, which moves its QUIC connection onto
//! the new path.
//!
//! Without netlink (a sandbox that forbids it) the daemon simply does not watch; its
//! network figures are then read on demand.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use rustix::net::netlink::SocketAddrNetlink;
use rustix::net::{AddressFamily, RecvFlags, SocketFlags, SocketType};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use letstalk_ipc::types::{EventBody, Network};

use crate::{Daemon, device, diagnostics, events, now_ms};

/// How long the routing table must be quiet before the network is read again.
const DEBOUNCE: Duration = Duration::from_millis(300);

// Routing netlink multicast groups (linux/rtnetlink.h).
const RTMGRP_LINK: u32 = 0x1;
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
const RTMGRP_IPV6_IFADDR: u32 = 0x100;
const RTMGRP_IPV6_ROUTE: u32 = 0x400;

/// Someone to tell when the network changed (the relay link).
pub trait OnChange: Send + Sync {
    fn network_changed(&self) -> futures::future::BoxFuture<'_, ()>;
}

fn netlink_socket() -> std::io::Result<OwnedFd> {
    // Protocol `None` is NETLINK_ROUTE.
    let fd = rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::RAW,
        SocketFlags::CLOEXEC,
        None,
    )?;
    let groups = RTMGRP_LINK
        | RTMGRP_IPV4_IFADDR
        | RTMGRP_IPV4_ROUTE
        | RTMGRP_IPV6_IFADDR
        | RTMGRP_IPV6_ROUTE;
    rustix::net::bind(&fd, &SocketAddrNetlink::new(0, groups))?;
    Ok(fd)
}

/// A thread blocked on the netlink socket (no wake-ups while nothing changes) that
/// sends a tick per message; it ends when the receiver is gone.
fn spawn_reader(fd: OwnedFd) -> std::io::Result<mpsc::UnboundedReceiver<()>> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new().name("netwatch".into()).spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match rustix::net::recv(&fd, &mut buf[..], RecvFlags::empty()) {
                // NOBUFS: the kernel dropped messages for us; something changed.
                Ok(_) | Err(rustix::io::Errno::NOBUFS) => {
                    if tx.send(()).is_err() {
                        return;
                    }
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "routing netlink failed; no longer watching");
                    return;
                }
            }
        }
    })?;
    Ok(rx)
}

/// Records the network in use now and when it differs from the last recorded, emits
/// `network.changed`. Returns whether it changed. On a cellular network the system bus
/// is asked once (at most a second, never without a bus) for the generation (2G to 5G)
/// the history records.
async fn observe(daemon: &Arc<Daemon>, network: Network, emit: bool) -> bool {
    let network = if network.kind == letstalk_ipc::types::NetworkType::Cellular {
        device::hardware_and_network(network).await.1
    } else {
        network
    };
    let outcome = daemon
        .store
        .call(move |c| {
            let tx = c.transaction()?;
            let now = now_ms();
            let mut seq = None;
            if diagnostics::record_network(&tx, &network, now)? && emit {
                seq = Some(events::append(&tx, &EventBody::NetworkChanged { network }, now)?);
            }
            tx.commit()?;
            Ok(seq)
        })
        .await;
    match outcome {
        Ok(Some(seq)) => {
            daemon.bus.published(seq);
            true
        }
        Ok(None) => false,
        Err(e) => {
            tracing::warn!(error = %e, "recording the network");
            false
        }
    }
}

/// Runs until cancelled.
pub async fn run(daemon: Arc<Daemon>, link: Option<Arc<dyn OnChange>>, cancel: CancellationToken) {
    let mut last = device::network();
    daemon.set_network(last.clone());
    // At start the network is only recorded: nothing changed while a UI was watching.
    observe(&daemon, last.clone(), false).await;
    let mut ticks = match netlink_socket().and_then(spawn_reader) {
        Ok(rx) => rx,
        Err(e) => {
            tracing::info!(error = %e, "no routing netlink: network changes are not watched");
            return;
        }
    };
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            tick = ticks.recv() => if tick.is_none() { return },
        }
        // Let the burst settle: wait until the routing table has been quiet for DEBOUNCE.
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(DEBOUNCE) => break,
                tick = ticks.recv() => if tick.is_none() { return },
            }
        }
        let now = device::network();
        daemon.set_network(now.clone());
        if (last.kind, &last.interface) == (now.kind, &now.interface) {
            continue;
        }
        last = now.clone();
        tracing::info!(kind = ?now.kind, interface = ?now.interface, "network changed");
        observe(&daemon, now, true).await;
        if let Some(link) = &link {
            link.network_changed().await;
        }
        daemon.apply_keepalive().await;
        // Automatic downloads follow the network type.
        daemon.transfers.wake();
    }
}
