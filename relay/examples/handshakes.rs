//! Benchmark: full handshakes per second including device authentication (QUIC + TLS
//! 1.3 + `Hello` + Ed25519 `Auth`), and the relay's resident memory per idle
//! authenticated connection (RSS delta of a `letstalk-relay` child process).
//!
//! `cargo build --release -p letstalk-relay --bins --examples &&
//!  target/release/examples/handshakes [ACCOUNTS] [HANDSHAKES]`

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use ed25519_dalek::{Signer, SigningKey};
use letstalk_wire::{PROTOCOL_VERSION, Request, Response, auth_message};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let accounts: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(200);
    let handshakes: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(2000);
    tokio::runtime::Runtime::new()?.block_on(bench(accounts, handshakes))
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
    Ok(line.split_whitespace().nth(1).context("VmRSS value")?.parse()?)
}

async fn request(conn: &quinn::Connection, req: &Request) -> Result<Response> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&req.encode()?).await?;
    send.finish()?;
    let data = recv.read_to_end(2 << 20).await?;
    Ok(Response::decode(data.get(4..).context("short response")?)?)
}

/// Connects, says hello and binds (`register`) or authenticates as `user`.
async fn session(
    ep: &quinn::Endpoint,
    addr: SocketAddr,
    user: &str,
    key: &SigningKey,
    register: bool,
) -> Result<quinn::Connection> {
    let conn = ep.connect(addr, "localhost")?.await?;
    let Response::HelloOk { challenge, .. } = request(
        &conn,
        &Request::Hello { versions: vec![PROTOCOL_VERSION], client: "bench".into() },
    )
    .await?
    else {
        bail!("no hello");
    };
    let mut exporter = [0u8; letstalk_wire::AUTH_EXPORTER_LEN];
    conn.export_keying_material(&mut exporter, letstalk_wire::AUTH_EXPORTER_LABEL, &[])
        .map_err(|_| anyhow::anyhow!("no TLS exporter"))?;
    let signature = key.sign(&auth_message(&challenge, &exporter, user)).to_bytes();
    let device_key = key.verifying_key().to_bytes();
    let req = if register {
        Request::Register {
            user_id: user.into(),
            password: "benchmark password".into(),
            email: format!("{user}@example.org"),
            nickname: user.into(),
            device_key,
            signature,
            identity: vec![],
        }
    } else {
        Request::Auth { user_id: user.into(), device_key, signature }
    };
    match request(&conn, &req).await? {
        Response::Authenticated { .. } => Ok(conn),
        other => bail!("{user}: {other:?}"),
    }
}

async fn bench(accounts: usize, handshakes: usize) -> Result<()> {
    let exe = std::env::current_exe()?;
    let relay_bin =
        exe.parent().and_then(|p| p.parent()).context("exe dir")?.join("letstalk-relay");
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("relay.toml");
    // Registration bursts from one address: lift the per-IP limit for the benchmark.
    std::fs::write(&config, "register_per_ip = { burst = 100000, per_minute = 100000 }\n")?;
    let mut child = Command::new(&relay_bin)
        .args(["--listen", "127.0.0.1:0", "--log", "error", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("{} (build it with --bins)", relay_bin.display()))?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let addr: SocketAddr =
        line.trim().strip_prefix("listening on ").context("listening line")?.parse()?;

    let pem = std::fs::read(dir.path().join("data/relay-cert.pem"))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(c?)?;
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![letstalk_wire::ALPN.to_vec()];
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls)?,
    )));

    let keys: Vec<SigningKey> =
        (0..accounts).map(|_| SigningKey::from_bytes(&rand::random())).collect();
    let users: Vec<String> = (0..accounts).map(|i| format!("bench{i}")).collect();
    let started = Instant::now();
    for chunk in (0..accounts).collect::<Vec<_>>().chunks(16) {
        let mut set = tokio::task::JoinSet::new();
        for &i in chunk {
            let (ep, user, key) = (ep.clone(), users[i].clone(), keys[i].clone());
            set.spawn(async move { session(&ep, addr, &user, &key, true).await });
        }
        while let Some(c) = set.join_next().await {
            c??.close(0u32.into(), b"registered");
        }
    }
    println!(
        "registered {accounts} accounts in {:.2} s (Argon2id each)",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    if std::env::var_os("BENCH_MAPS").is_some() {
        let maps = std::fs::read_to_string(format!("/proc/{}/smaps", child.id()))?;
        let mut cur = String::new();
        for l in maps.lines() {
            if l.contains('-') && !l.starts_with(char::is_uppercase) {
                cur = l.to_owned();
            } else if let Some(v) = l.strip_prefix("Rss:") {
                let kib: u64 = v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0);
                if kib > 4096 {
                    println!("{kib:>8} KiB {cur}");
                }
            }
        }
        let tasks = std::fs::read_dir(format!("/proc/{}/task", child.id()))?.count();
        println!("threads: {tasks}");
    }
    // Idle memory: RSS before and after `accounts` authenticated connections that stay.
    let idle_before = rss_kib(child.id())?;
    let mut live = Vec::with_capacity(accounts);
    for i in 0..accounts {
        live.push(session(&ep, addr, &users[i], &keys[i], false).await?);
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let idle_after = rss_kib(child.id())?;
    println!(
        "relay RSS: {idle_before} KiB -> {idle_after} KiB with {} idle authenticated connections: {:.1} KiB each",
        live.len(),
        (idle_after.saturating_sub(idle_before)) as f64 / live.len().max(1) as f64
    );
    for c in &live {
        c.close(0u32.into(), b"done");
    }
    drop(live);

    // Handshakes: each a new QUIC+TLS connection, Hello and Ed25519 Auth, 16 at a time.
    let started = Instant::now();
    let mut done = 0;
    while done < handshakes {
        let mut set = tokio::task::JoinSet::new();
        for j in 0..16.min(handshakes - done) {
            let i = (done + j) % accounts;
            let (ep, user, key) = (ep.clone(), users[i].clone(), keys[i].clone());
            set.spawn(async move {
                let c = session(&ep, addr, &user, &key, false).await?;
                c.close(0u32.into(), b"done");
                anyhow::Ok(())
            });
        }
        while let Some(r) = set.join_next().await {
            r??;
            done += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{handshakes} full handshakes with device auth in {secs:.2} s: {:.0}/s",
        handshakes as f64 / secs
    );
    child.kill()?;
    child.wait()?;
    Ok(())
}
