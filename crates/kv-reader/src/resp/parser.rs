//! Requests of the Redis serialization protocol, parsed in place: arrays of bulk strings (what
//! every client sends, RESP2 and RESP3 alike) and inline commands (what a person types into a
//! socket). Nothing is copied: a request is the ranges of its arguments in the read buffer.
//!
//! Every length is bounded before anything is buffered for it, so a client can make the server
//! hold at most [`MAX_REQUEST_BYTES`] of its input, and a bad length is a [`ProtocolError`]
//! that ends that connection only.

use std::ops::Range;

/// Most arguments in one request, the command's name included: an `MGET` of
/// `read::limits::MAX_BATCH_KEYS` keys fits.
pub const MAX_ARGS: usize = 1024;
/// Longest argument (a key, a token, an `ECHO`'s message).
pub const MAX_BULK_BYTES: usize = 512 * 1024;
/// Longest request: the most of a client's input the server buffers before a request is whole.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// Longest inline command line.
pub const MAX_INLINE_BYTES: usize = 64 * 1024;
/// Longest `*<count>` or `$<length>` line, CRLF included: a count of 20 digits fits.
const MAX_LENGTH_LINE: usize = 24;

/// Why a request cannot be read; Redis's own wording, after its `Protocol error: `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("invalid multibulk length")]
    ArrayLength,
    #[error("invalid bulk length")]
    BulkLength,
    #[error("expected '$', got '{}'", char::from(*.0).escape_default())]
    ExpectedBulk(u8),
    #[error("too many arguments in a request (at most {MAX_ARGS})")]
    TooManyArgs,
    #[error("a bulk string is longer than {MAX_BULK_BYTES} bytes")]
    BulkTooLong,
    #[error("a request is longer than {MAX_REQUEST_BYTES} bytes")]
    RequestTooLong,
    #[error("too big inline request")]
    InlineTooLong,
    #[error("a bulk string does not end with CRLF")]
    MissingCrlf,
    #[error(
        "the request was not completed within KV_API_RESP_REQUEST_TIMEOUT_MS of its first byte"
    )]
    Incomplete,
}

/// Parses the request at the start of `buf`, its arguments' ranges into `args`. `Ok(Some(n))`:
/// a whole request of `n` bytes (`args` empty for an empty one, which is skipped, as Redis
/// does); `Ok(None)`: more bytes are needed.
pub fn parse(buf: &[u8], args: &mut Vec<Range<usize>>) -> Result<Option<usize>, ProtocolError> {
    args.clear();
    match buf.first() {
        None => Ok(None),
        Some(b'*') => parse_array(buf, args),
        Some(_) => parse_inline(buf, args),
    }
}

/// The number on the line starting at `at` after its type byte, and where the next line
/// starts; `Ok(None)` when the line is not complete yet.
fn length_line(
    buf: &[u8],
    at: usize,
    bad: ProtocolError,
) -> Result<Option<(i64, usize)>, ProtocolError> {
    let window = &buf[at + 1..buf.len().min(at + MAX_LENGTH_LINE)];
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        return if buf.len() >= at + MAX_LENGTH_LINE {
            Err(bad)
        } else {
            Ok(None)
        };
    };
    let lf = at + 1 + cr + 1;
    match buf.get(lf) {
        None => return Ok(None),
        Some(b'\n') => {}
        Some(_) => return Err(bad),
    }
    let digits = &window[..cr];
    let (negative, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(bad);
    }
    let value = digits
        .iter()
        .fold(0i64, |n, &d| n * 10 + i64::from(d - b'0'));
    Ok(Some((if negative { -value } else { value }, lf + 1)))
}

fn parse_array(buf: &[u8], args: &mut Vec<Range<usize>>) -> Result<Option<usize>, ProtocolError> {
    let Some((count, mut at)) = length_line(buf, 0, ProtocolError::ArrayLength)? else {
        return Ok(None);
    };
    if count <= 0 {
        // `*0` and `*-1` are no command at all; any other negative count is garbage.
        return if count < -1 {
            Err(ProtocolError::ArrayLength)
        } else {
            Ok(Some(at))
        };
    }
    if count as usize > MAX_ARGS {
        return Err(ProtocolError::TooManyArgs);
    }
    for _ in 0..count {
        match buf.get(at) {
            None => return Ok(None),
            Some(b'$') => {}
            Some(&other) => return Err(ProtocolError::ExpectedBulk(other)),
        }
        let Some((len, start)) = length_line(buf, at, ProtocolError::BulkLength)? else {
            return Ok(None);
        };
        if len < 0 {
            return Err(ProtocolError::BulkLength);
        }
        let len = len as usize;
        if len > MAX_BULK_BYTES {
            return Err(ProtocolError::BulkTooLong);
        }
        let end = start + len;
        if end + 2 > MAX_REQUEST_BYTES {
            return Err(ProtocolError::RequestTooLong);
        }
        match buf.get(end..end + 2) {
            None => return Ok(None),
            Some(b"\r\n") => {}
            Some(_) => return Err(ProtocolError::MissingCrlf),
        }
        args.push(start..end);
        at = end + 2;
    }
    Ok(Some(at))
}

/// A line of words separated by spaces or tabs, ended by LF (a CR before it is dropped).
fn parse_inline(buf: &[u8], args: &mut Vec<Range<usize>>) -> Result<Option<usize>, ProtocolError> {
    let window = &buf[..buf.len().min(MAX_INLINE_BYTES)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= MAX_INLINE_BYTES {
            Err(ProtocolError::InlineTooLong)
        } else {
            Ok(None)
        };
    };
    let line = &buf[..lf];
    let mut at = 0;
    while at < line.len() {
        if matches!(line[at], b' ' | b'\t' | b'\r') {
            at += 1;
            continue;
        }
        let start = at;
        while at < line.len() && !matches!(line[at], b' ' | b'\t' | b'\r') {
            at += 1;
        }
        if args.len() == MAX_ARGS {
            return Err(ProtocolError::TooManyArgs);
        }
        args.push(start..at);
    }
    Ok(Some(lf + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A whole request's arguments and length.
    type Request = (Vec<Vec<u8>>, usize);

    fn words(buf: &[u8]) -> Result<Option<Request>, ProtocolError> {
        let mut args = Vec::new();
        Ok(parse(buf, &mut args)?
            .map(|n| (args.iter().map(|r| buf[r.clone()].to_vec()).collect(), n)))
    }

    fn encode(args: &[Vec<u8>]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    #[test]
    fn an_array_of_bulk_strings_is_one_request_and_binary_arguments_stay_whole() {
        let buf = b"*2\r\n$3\r\nGET\r\n$5\r\na\r\n\x00b\r\n*1\r\n$4\r\nPING\r\n";
        let (args, used) = words(buf).expect("valid").expect("whole");
        assert_eq!(args, vec![b"GET".to_vec(), b"a\r\n\x00b".to_vec()]);
        let (next, _) = words(&buf[used..]).expect("valid").expect("whole");
        assert_eq!(next, vec![b"PING".to_vec()]);
    }

    #[test]
    fn every_cut_of_a_request_asks_for_more_bytes_until_it_is_whole() {
        let buf = encode(&[b"MGET".to_vec(), b"k1".to_vec(), b"".to_vec()]);
        for cut in 0..buf.len() {
            assert_eq!(words(&buf[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(words(&buf).expect("valid").expect("whole").1, buf.len());
    }

    #[test]
    fn inline_commands_split_on_spaces() {
        let (args, used) = words(b"  PING  hello\r\nGET")
            .expect("valid")
            .expect("whole");
        assert_eq!(args, vec![b"PING".to_vec(), b"hello".to_vec()]);
        assert_eq!(used, 15);
        assert_eq!(words(b"\r\n").expect("valid").expect("whole").0.len(), 0);
    }

    #[test]
    fn bad_lengths_and_oversized_requests_are_protocol_errors() {
        assert_eq!(words(b"*x\r\n"), Err(ProtocolError::ArrayLength));
        assert_eq!(words(b"*-2\r\n"), Err(ProtocolError::ArrayLength));
        assert_eq!(words(b"*1\r\n$-1\r\n"), Err(ProtocolError::BulkLength));
        assert_eq!(
            words(b"*1\r\n+OK\r\n"),
            Err(ProtocolError::ExpectedBulk(b'+'))
        );
        assert_eq!(words(b"*1\r\n$2\r\nabcd"), Err(ProtocolError::MissingCrlf));
        assert_eq!(words(b"*99999\r\n"), Err(ProtocolError::TooManyArgs));
        assert_eq!(
            words(b"*1\r\n$9999999999\r\n"),
            Err(ProtocolError::BulkTooLong)
        );
        assert_eq!(
            words(b"*1\r\n$1111111111111111111111111\r\n"),
            Err(ProtocolError::BulkLength)
        );
        let big = format!("*3\r\n${MAX_BULK_BYTES}\r\n");
        let mut buf = big.into_bytes();
        buf.resize(buf.len() + MAX_BULK_BYTES, b'a');
        buf.extend_from_slice(format!("\r\n${MAX_BULK_BYTES}\r\n").as_bytes());
        assert_eq!(words(&buf), Err(ProtocolError::RequestTooLong));
        assert_eq!(
            words(&vec![b'a'; MAX_INLINE_BYTES]),
            Err(ProtocolError::InlineTooLong)
        );
        assert_eq!(words(b"*1\r\n$1\r\na\r\n").map(|r| r.is_some()), Ok(true));
        assert_eq!(words(b"*0\r\n"), Ok(Some((Vec::new(), 4))));
    }

    proptest! {
        #[test]
        fn any_bytes_parse_to_a_request_a_wait_or_an_error_within_the_buffer(
            buf in proptest::collection::vec(any::<u8>(), 0..512)
        ) {
            let mut args = Vec::new();
            if let Ok(Some(used)) = parse(&buf, &mut args) {
                prop_assert!(used <= buf.len());
                prop_assert!(args.iter().all(|r| r.end <= used && r.start <= r.end));
            }
        }

        #[test]
        fn encoded_arguments_parse_back_exactly_whatever_the_bytes(
            args in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..16)
        ) {
            let buf = encode(&args);
            prop_assert_eq!(words(&buf), Ok(Some((args, buf.len()))));
        }
    }
}
