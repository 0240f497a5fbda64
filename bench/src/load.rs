//! A closed-loop JSON-RPC load generator over raw lines: `window` requests in flight on
//! one channel, a new one sent as soon as an answer arrives, each answer's round trip
//! recorded. No client library in the way, so the figures are the server's and the
//! transport's, not a client's.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

/// One method call, repeated: `{"jsonrpc":"2.0","id":N,"method":…,"params":…}`.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub(crate) method: String,
    /// The params as JSON text (`{}` or `[]`).
    pub(crate) params: String,
}

impl Call {
    pub(crate) fn new(method: &str, params: &str) -> Self {
        Self { method: method.to_owned(), params: params.to_owned() }
    }

    /// The request line with id `id`, newline included.
    pub(crate) fn line(&self, id: u64) -> String {
        format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"{}\",\"params\":{}}}\n",
            self.method, self.params
        )
    }
}

/// How much load one channel carries.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    /// Requests in flight at once.
    pub(crate) window: usize,
    /// Calls answered but not recorded, first.
    pub(crate) warmup: usize,
    /// Calls recorded.
    pub(crate) calls: usize,
}

/// Runs `shape` over one channel; returns the recorded round trips (in completion order).
///
/// Ids run from 1 on every run, so a channel can be reused once a run has finished (all
/// its answers have been read). Lines without an id (notifications) are skipped; an error
/// answer ends the run with that error.
pub(crate) async fn closed_loop<R, W>(
    reader: &mut R,
    writer: &mut W,
    call: &Call,
    shape: Shape,
) -> Result<Vec<Duration>>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let total = shape.warmup + shape.calls;
    let window = shape.window.max(1);
    // sent_at[id] is when request `id` was written; ids are 1..=total.
    let mut sent_at: Vec<Option<Instant>> = vec![None; total + 1];
    let mut samples = Vec::with_capacity(shape.calls);
    let mut next_id = 1usize;
    let mut answered = 0usize;
    let mut line = Vec::with_capacity(1024);

    while next_id <= total && next_id <= window {
        send(writer, call, next_id, &mut sent_at).await?;
        next_id += 1;
    }
    while answered < total {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).await.context("reading an answer")?;
        if n == 0 {
            bail!("the server closed the channel after {answered} of {total} answers");
        }
        let Some(id) = answer_id(&line)? else { continue };
        let Some(started) = sent_at.get_mut(id).and_then(Option::take) else {
            bail!("answer to unknown or repeated request id {id}");
        };
        let round_trip = started.elapsed();
        answered += 1;
        if id > shape.warmup {
            samples.push(round_trip);
        }
        if next_id <= total {
            send(writer, call, next_id, &mut sent_at).await?;
            next_id += 1;
        }
    }
    Ok(samples)
}

async fn send<W: AsyncWrite + Unpin>(
    writer: &mut W,
    call: &Call,
    id: usize,
    sent_at: &mut [Option<Instant>],
) -> Result<()> {
    let line = call.line(id as u64);
    if let Some(slot) = sent_at.get_mut(id) {
        *slot = Some(Instant::now());
    }
    writer.write_all(line.as_bytes()).await.context("writing a request")?;
    writer.flush().await.context("writing a request")?;
    Ok(())
}

/// The id of an answer line; `None` for a notification. An error answer is an error.
pub(crate) fn answer_id(line: &[u8]) -> Result<Option<usize>> {
    let value: Value = serde_json::from_slice(line).with_context(|| {
        format!("the server sent a line that is not JSON: {}", String::from_utf8_lossy(line))
    })?;
    if let Some(error) = value.get("error") {
        bail!("the server answered with an error: {error}");
    }
    match value.get("id") {
        None | Some(Value::Null) => Ok(None),
        Some(id) => match id.as_u64() {
            Some(id) => Ok(Some(usize::try_from(id)?)),
            None => bail!("answer with a non-numeric id: {id}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_line() {
        let line = Call::new("system.status", "{}").line(7);
        let v: Value = serde_json::from_str(&line).unwrap_or_default();
        assert_eq!(v["id"], 7);
        assert_eq!(v["method"], "system.status");
        assert!(line.ends_with('\n'));
    }

    #[test]
    fn ids() {
        assert_eq!(answer_id(br#"{"jsonrpc":"2.0","id":3,"result":{}}"#).ok(), Some(Some(3)));
        assert_eq!(
            answer_id(br#"{"jsonrpc":"2.0","method":"event","params":{}}"#).ok(),
            Some(None)
        );
        assert!(answer_id(br#"{"jsonrpc":"2.0","id":3,"error":{"code":1}}"#).is_err());
    }
}
