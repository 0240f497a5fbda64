//! `letstalk-bench files`: a file through the relay, between two `letstalkd` processes
//! on 127.0.0.1, beside a raw copy of the same bytes on the same disk.
//!
//! Figures: encryption on the sender (`files.send` returns once the encrypted copy is
//! durable), upload (the first `file.progress` up until the relay acknowledged the whole
//! blob), download (`files.download` on the receiver: fetch, decrypt to a file while
//! checking the SHA-256), each in MiB/s of the file; and the baseline: the same bytes copied from
//! file to file and synced (what moving them costs without any network or crypto).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use letstalk_ipc::Client;
use rand_core::RngCore;
use serde_json::json;

use crate::FilesArgs;
use crate::ipc::exe_dir;
use crate::messaging::{progress, register, start_daemon, verdict};
use crate::servers::{RelayProcess, release_bin};
use crate::sys;

/// The target from the issue "Measure it": through the relay on loopback.
const TARGET_MIB_S: f64 = 150.0;

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / d.as_secs_f64().max(1e-9)
}

pub(crate) async fn run(args: &FilesArgs) -> Result<()> {
    let dir = exe_dir()?;
    let daemon_bin = release_bin(args.daemon.as_ref(), &dir, "letstalkd")?;
    let relay_bin = release_bin(args.relay.as_ref(), &dir, "letstalk-relay")?;
    let work = tempfile::Builder::new().prefix("letstalk-bench-").tempdir()?;
    let size = args.mib * 1024 * 1024;

    println!("letstalk-bench files: {}", sys::host());
    println!(
        "  a {} MiB random file, letstalkd alice → letstalk-relay → letstalkd bob on 127.0.0.1",
        args.mib
    );
    println!();

    progress("writing the random file");
    let source = work.path().join("source.bin");
    write_random(&source, size)?;

    progress("baseline: raw copy of the same bytes (file to file, synced)");
    let copy_target = work.path().join("copy.bin");
    let started = Instant::now();
    std::fs::copy(&source, &copy_target)?;
    std::fs::File::open(&copy_target)?.sync_all()?;
    let raw = started.elapsed();
    std::fs::remove_file(&copy_target)?;

    progress("starting relay and two daemons, registering alice and bob");
    let mut relay = RelayProcess::start(&relay_bin, &work.path().join("relay"))?;
    let mut alice = start_daemon(&daemon_bin, &work.path().join("alice"), &relay).await?;
    let mut bob = start_daemon(&daemon_bin, &work.path().join("bob"), &relay).await?;
    let a = Client::connect(&alice.socket).await?;
    let b = Client::connect(&bob.socket).await?;
    register(&a, "alice").await?;
    register(&b, "bob").await?;
    b.call_value("settings.set", json!({"auto_download": {"wifi": false, "cellular": false}}))
        .await?;
    let mut a_events = a.take_events().context("alice's events")?;
    a.call_value("events.subscribe", json!({"kinds": ["file.progress"]})).await?;
    let mut b_events = b.take_events().context("bob's events")?;
    b.call_value("events.subscribe", json!({"kinds": ["message.received", "file.progress"]}))
        .await?;

    progress("files.send (encrypt), upload, files.download (fetch, check, decrypt)");
    let started = Instant::now();
    let sent = a.call_value("files.send", json!({"to": "user:bob", "path": source})).await?;
    let encrypt = started.elapsed();
    let id = sent["message"]["message_id"].as_str().context("message id")?.to_owned();
    let mut upload_start: Option<Instant> = None;
    let upload = loop {
        let e = tokio::time::timeout(Duration::from_secs(args.limit_s), a_events.recv())
            .await
            .context("upload timed out")?
            .context("alice's events ended")?;
        if e["message_id"] != id.as_str() {
            continue;
        }
        let at = *upload_start.get_or_insert_with(Instant::now);
        if e["bytes"] == e["total"] {
            break at.elapsed();
        }
    };
    loop {
        let e = tokio::time::timeout(Duration::from_secs(args.limit_s), b_events.recv())
            .await
            .context("the file message did not arrive")?
            .context("bob's events ended")?;
        if e["message"]["message_id"] == id.as_str() {
            break;
        }
    }
    let dest = work.path().join("received.bin");
    let started = Instant::now();
    let mut call =
        Box::pin(b.call_value("files.download", json!({"message_id": id, "dest": dest})));
    // The transfer leg alone: bob's first `file.progress` down until the whole blob is
    // on his disk (before the check and the write-out).
    let (mut first, mut fetched) = (None::<Instant>, None::<Instant>);
    let got = loop {
        tokio::select! {
            r = &mut call => break r?,
            Some(e) = b_events.recv() => {
                if e["kind"] == "file.progress" && e["message_id"] == id.as_str() {
                    first.get_or_insert_with(Instant::now);
                    if e["bytes"] == e["total"] {
                        fetched = Some(Instant::now());
                    }
                }
            }
        }
    };
    let download = started.elapsed();
    drop(call);
    let transfer = match (first, fetched) {
        (Some(a), Some(b)) => b.duration_since(a),
        _ => download,
    };
    if got["sha256"] != sent["message"]["file"]["sha256"] {
        bail!("the received file's SHA-256 differs");
    }
    drop((a, b));
    alice.stop()?;
    bob.stop()?;
    relay.stop()?;

    let size = size as u64;
    println!("== A {} MiB file through the relay ==", args.mib);
    println!("  raw copy of the same bytes (baseline):  {:>7.0} MiB/s", mib_s(size, raw));
    println!("  encrypt on the sender (files.send):     {:>7.0} MiB/s", mib_s(size, encrypt));
    println!("  upload to the relay:                    {:>7.0} MiB/s", mib_s(size, upload));
    println!("  download from the relay (transfer):      {:>7.0} MiB/s", mib_s(size, transfer));
    println!(
        "  files.download in all (fetch, decrypt and check, plaintext to the file): {:.0} MiB/s",
        mib_s(size, download)
    );
    let through = upload + transfer;
    println!(
        "  through the relay (upload + download):  {:>7.0} MiB/s  ({:.2} s for both legs)",
        mib_s(size, through),
        through.as_secs_f64()
    );
    println!(
        "  target: ≥ {TARGET_MIB_S:.0} MiB/s through the relay   →  upload {}, download {}",
        verdict(mib_s(size, upload) >= TARGET_MIB_S),
        verdict(mib_s(size, transfer) >= TARGET_MIB_S)
    );
    Ok(())
}

fn write_random(path: &Path, size: usize) -> Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut buf = vec![0u8; 1024 * 1024];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len());
        rand_core::OsRng.fill_bytes(&mut buf[..n]);
        f.write_all(&buf[..n])?;
        left -= n;
    }
    f.flush()?;
    Ok(())
}
