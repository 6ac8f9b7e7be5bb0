//! Replies in RESP2 or RESP3, written straight into a connection's output buffer: the buffer is
//! reused from one request to the next, so a reply allocates nothing of its own.

use bytes::{BufMut, BytesMut};

/// A connection's output and the protocol version its client chose with `HELLO`.
#[derive(Debug)]
pub struct Reply<'a> {
    out: &'a mut BytesMut,
    resp3: bool,
}

impl<'a> Reply<'a> {
    pub fn new(out: &'a mut BytesMut, resp3: bool) -> Self {
        Self { out, resp3 }
    }

    /// After `HELLO`, the rest of the reply in the version just chosen.
    pub fn set_resp3(&mut self, resp3: bool) {
        self.resp3 = resp3;
    }

    pub fn simple(&mut self, text: &str) {
        self.out.put_u8(b'+');
        self.out.put_slice(text.as_bytes());
        self.out.put_slice(b"\r\n");
    }

    /// `-CODE message`. CR and LF, which would end the line early (a message may quote what
    /// the client sent), become spaces.
    pub fn error(&mut self, text: &str) {
        self.out.put_u8(b'-');
        self.out.extend(
            text.bytes()
                .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
        );
        self.out.put_slice(b"\r\n");
    }

    pub fn ok(&mut self) {
        self.out.put_slice(b"+OK\r\n");
    }

    pub fn integer(&mut self, n: i64) {
        self.out.put_u8(b':');
        self.number(n);
        self.out.put_slice(b"\r\n");
    }

    pub fn bulk(&mut self, bytes: &[u8]) {
        self.out.put_u8(b'$');
        self.number(bytes.len() as i64);
        self.out.put_slice(b"\r\n");
        self.out.put_slice(bytes);
        self.out.put_slice(b"\r\n");
    }

    pub fn null(&mut self) {
        if self.resp3 {
            self.out.put_slice(b"_\r\n");
        } else {
            self.out.put_slice(b"$-1\r\n");
        }
    }

    pub fn array(&mut self, len: usize) {
        self.out.put_u8(b'*');
        self.number(len as i64);
        self.out.put_slice(b"\r\n");
    }

    /// A map of `len` pairs: RESP3's map, RESP2's flat array of keys and values.
    pub fn map(&mut self, len: usize) {
        if self.resp3 {
            self.out.put_u8(b'%');
            self.number(len as i64);
            self.out.put_slice(b"\r\n");
        } else {
            self.array(2 * len);
        }
    }

    /// Text for a person (`INFO`): RESP3's verbatim string, RESP2's bulk string.
    pub fn text(&mut self, text: &str) {
        if self.resp3 {
            self.out.put_u8(b'=');
            self.number(text.len() as i64 + 4);
            self.out.put_slice(b"\r\ntxt:");
        } else {
            self.out.put_u8(b'$');
            self.number(text.len() as i64);
            self.out.put_slice(b"\r\n");
        }
        self.out.put_slice(text.as_bytes());
        self.out.put_slice(b"\r\n");
    }

    /// Decimal digits without going through `fmt`.
    fn number(&mut self, n: i64) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut rest = n.unsigned_abs();
        loop {
            at -= 1;
            digits[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        if n < 0 {
            self.out.put_u8(b'-');
        }
        self.out.put_slice(&digits[at..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(resp3: bool, f: impl FnOnce(&mut Reply<'_>)) -> Vec<u8> {
        let mut out = BytesMut::new();
        f(&mut Reply::new(&mut out, resp3));
        out.to_vec()
    }

    #[test]
    fn replies_are_the_protocol_s_bytes_in_either_version() {
        assert_eq!(written(false, |r| r.integer(-42)), b":-42\r\n");
        assert_eq!(written(false, |r| r.integer(0)), b":0\r\n");
        assert_eq!(written(false, |r| r.bulk(b"a\r\nb")), b"$4\r\na\r\nb\r\n");
        assert_eq!(written(false, |r| r.null()), b"$-1\r\n");
        assert_eq!(written(true, |r| r.null()), b"_\r\n");
        assert_eq!(written(false, |r| r.map(2)), b"*4\r\n");
        assert_eq!(written(true, |r| r.map(2)), b"%2\r\n");
        assert_eq!(written(true, |r| r.text("a")), b"=5\r\ntxt:a\r\n");
        assert_eq!(
            written(false, |r| r.error("ERR bad 'x\r\ny'")),
            b"-ERR bad 'x  y'\r\n"
        );
    }
}
