//! Sans-IO line framing: bytes in, complete lines (or "that line was too long") out.
//!
//! A line longer than the limit is not buffered: its bytes are dropped as they arrive
//! and, once its newline shows up, the framer reports [`Frame::TooLong`] and carries on
//! with the next line, so one hostile line never costs more than the limit in memory and
//! the connection stays usable.

/// One unit of input.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A complete line, without its `\n` (and without a trailing `\r`).
    Line(Vec<u8>),
    /// A line exceeded the limit; its bytes were discarded.
    TooLong,
}

/// Splits a byte stream into lines of at most `limit` bytes.
#[derive(Debug)]
pub struct LineFramer {
    limit: usize,
    buf: Vec<u8>,
    /// True while we are skipping the rest of an over-long line.
    discarding: bool,
}

impl LineFramer {
    pub fn new(limit: usize) -> Self {
        Self { limit, buf: Vec::new(), discarding: false }
    }

    /// Feeds `input` and appends every frame it completes to `out`.
    pub fn push(&mut self, mut input: &[u8], out: &mut Vec<Frame>) {
        while !input.is_empty() {
            match input.iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    let (head, rest) = input.split_at(nl);
                    input = rest.get(1..).unwrap_or_default();
                    if self.discarding || self.buf.len() + head.len() > self.limit {
                        self.discarding = false;
                        self.buf.clear();
                        out.push(Frame::TooLong);
                    } else {
                        self.buf.extend_from_slice(head);
                        let mut line = std::mem::take(&mut self.buf);
                        if line.last() == Some(&b'\r') {
                            line.pop();
                        }
                        out.push(Frame::Line(line));
                    }
                }
                None => {
                    if !self.discarding {
                        if self.buf.len() + input.len() > self.limit {
                            self.discarding = true;
                            self.buf = Vec::new();
                        } else {
                            self.buf.extend_from_slice(input);
                        }
                    }
                    input = &[];
                }
            }
        }
    }

    /// Bytes buffered for an unfinished line.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frames(limit: usize, chunks: &[&[u8]]) -> Vec<Frame> {
        let mut f = LineFramer::new(limit);
        let mut out = Vec::new();
        for c in chunks {
            f.push(c, &mut out);
        }
        out
    }

    #[test]
    fn splits_lines_across_chunks() {
        let out = frames(10, &[b"ab", b"c\nde\r\n", b"f"]);
        assert_eq!(out, vec![Frame::Line(b"abc".to_vec()), Frame::Line(b"de".to_vec())]);
    }

    #[test]
    fn long_line_is_reported_once_and_the_next_one_survives() {
        let out = frames(4, &[b"12345", b"678", b"9\nok\n"]);
        assert_eq!(out, vec![Frame::TooLong, Frame::Line(b"ok".to_vec())]);
        let out = frames(4, &[b"12345\nok\n"]);
        assert_eq!(out, vec![Frame::TooLong, Frame::Line(b"ok".to_vec())]);
    }

    #[test]
    fn exactly_the_limit_is_accepted() {
        assert_eq!(frames(4, &[b"1234\n"]), vec![Frame::Line(b"1234".to_vec())]);
    }

    proptest! {
        /// However the input is chunked, lines come out the same, none over the limit,
        /// and the buffer never grows past it.
        #[test]
        fn chunking_does_not_matter(lines in proptest::collection::vec(proptest::collection::vec(any::<u8>().prop_filter("no nl", |b| *b != b'\n' && *b != b'\r'), 0..40), 0..20),
                                    cuts in proptest::collection::vec(1usize..17, 1..50)) {
            let limit = 24;
            let mut input = Vec::new();
            for l in &lines { input.extend_from_slice(l); input.push(b'\n'); }
            let expected: Vec<Frame> = lines.iter().map(|l| if l.len() > limit { Frame::TooLong } else { Frame::Line(l.clone()) }).collect();
            let mut f = LineFramer::new(limit);
            let mut out = Vec::new();
            let mut rest = &input[..];
            let mut i = 0;
            while !rest.is_empty() {
                let n = cuts[i % cuts.len()].min(rest.len());
                let (c, r) = rest.split_at(n);
                f.push(c, &mut out);
                prop_assert!(f.pending() <= limit);
                rest = r;
                i += 1;
            }
            prop_assert_eq!(out, expected);
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
            crate::jsonrpc::fuzz_decode(&data);
        }
    }
}
