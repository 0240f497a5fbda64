//! The one end-to-end test binary: real processes on loopback and private sockets,
//! driven through the IPC socket. Modules by capability.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "tests: a panic is a failed test")]

mod abuse;
mod accounts;
mod calls;
mod cli;
mod cluster;
mod device;
mod devices;
mod diagnostics;
mod emulated;
mod events;
mod files;
mod groups;
mod hostile;
mod ipc_contract;
mod keyring;
mod layering;
mod lifecycle;
mod messaging;
mod network;
mod notify;
mod policy;
mod privacy;
mod relay_crash;
mod sessions;
mod suspend;
mod systemd_units;
mod trust;
mod tui;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// A raw line-level connection, for testing the protocol below the client library.
#[derive(Debug)]
pub struct Raw {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Raw {
    pub async fn connect(path: &Path) -> Raw {
        let (r, w) = UnixStream::connect(path).await.expect("connect").into_split();
        Raw { reader: BufReader::new(r), writer: w }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("write");
    }

    pub async fn line(&mut self) -> Value {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(20), self.reader.read_line(&mut line))
            .await
            .expect("an answer within 20 s")
            .expect("read");
        assert!(n > 0, "connection closed");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// Sends one line and reads one answer.
    pub async fn ask(&mut self, line: &str) -> Value {
        self.send(line.as_bytes()).await;
        self.send(b"\n").await;
        self.line().await
    }
}
