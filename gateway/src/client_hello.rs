//! Sans-IO TLS ClientHello parser: SNI, ALPN and the client random, or not TLS, or need
//! more bytes.
//!
//! [`detect`] looks at the bytes a connection has delivered so far. It first
//! frames the ClientHello (one handshake message, possibly spread over several
//! consecutive handshake records), then parses it. Nothing is copied: the
//! handshake bytes are read in place across record headers, and only the
//! result (SNI, ALPN) is allocated. Every length read is capped.
//!
//! Two kinds of refusal: [`Detect::NotTls`] when the bytes are not a TLS ClientHello at all
//! (a scanner, plain HTTP), and [`Detect::Malformed`] when they are one whose contents break
//! the RFCs (two SNI names, a NUL in the name, an empty ALPN list): a broken or hostile TLS
//! client, worth counting apart.

/// Largest record payload accepted (TLS plaintext limit plus expansion slack).
pub const MAX_RECORD_LEN: usize = (1 << 14) + 2048;

/// Most records a ClientHello may span. Real clients send one to a few; the
/// cap bounds the work of re-running `detect` on every segment.
pub const MAX_RECORDS: usize = 256;

const RECORD_HEADER_LEN: usize = 5;
const HANDSHAKE_HEADER_LEN: usize = 4;
const CONTENT_HANDSHAKE: u8 = 0x16;
const HANDSHAKE_CLIENT_HELLO: u8 = 0x01;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;

/// What a complete ClientHello offered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The `host_name` of the server_name extension, lower-cased.
    pub sni: Option<String>,
    /// ALPN protocol names in the client's order (empty when not offered). Opaque bytes
    /// (RFC 7301): clients send non-UTF-8 GREASE values (RFC 8701) such as `[0xDA, 0xDA]`.
    pub alpn: Vec<Vec<u8>>,
    /// The client random: fresh for every connection a TLS client opens, so the same
    /// random arriving twice at once means one hello went round a routing loop.
    pub random: [u8; 32],
    /// Bytes of the stream holding the complete ClientHello, all its records
    /// included. Bytes after it are the client's next records.
    pub hello_len: usize,
}

/// Outcome of [`detect`] on the bytes received so far.
///
/// Answers are final: once `Found`, every longer input gives the same `Found`;
/// once `NotTls`, it stays `NotTls` (more bytes may give a more specific reason), and
/// once `Malformed`, it stays `Malformed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detect {
    Found(ClientHello),
    /// A prefix of a possible ClientHello. Only returned while
    /// `buf.len() < max_len`, so a caller that reads up to `max_len` bytes
    /// always gets a definite answer.
    NeedMore,
    NotTls(NotTls),
    /// A framed TLS ClientHello whose contents are invalid; the reason is for debug logs.
    Malformed(&'static str),
}

/// Why the bytes are not a ClientHello we accept (for debug logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotTls {
    #[error("record content type is not handshake")]
    NotHandshakeRecord,
    #[error("record version is not TLS")]
    BadVersion,
    #[error("record length is zero or too large")]
    BadLength,
    #[error("handshake message is not a ClientHello")]
    NotClientHello,
    #[error("ClientHello does not fit in the detection buffer")]
    TooLarge,
    #[error("ClientHello spans more than {MAX_RECORDS} records")]
    TooManyRecords,
}

/// Internal refusal: not TLS, or a malformed hello.
#[derive(Debug)]
enum Refusal {
    NotTls(NotTls),
    Malformed(&'static str),
}

impl From<NotTls> for Refusal {
    fn from(e: NotTls) -> Self {
        Refusal::NotTls(e)
    }
}

impl From<Refusal> for Detect {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::NotTls(e) => Detect::NotTls(e),
            Refusal::Malformed(why) => Detect::Malformed(why),
        }
    }
}

/// Detects a ClientHello at the start of `buf`, buffering at most `max_len` bytes.
pub fn detect(buf: &[u8], max_len: usize) -> Detect {
    match frame(buf, max_len) {
        Ok(Some((hello_len, msg_len))) => match parse(buf, msg_len) {
            Ok((random, sni, alpn)) => Detect::Found(ClientHello {
                sni,
                alpn,
                random,
                hello_len,
            }),
            Err(e) => e.into(),
        },
        Ok(None) => Detect::NeedMore,
        Err(e) => e.into(),
    }
}

/// Walks the handshake records. Returns the end of the record holding the last
/// byte of the ClientHello and the message body length, or `None` for more.
fn frame(buf: &[u8], max_len: usize) -> Result<Option<(usize, usize)>, Refusal> {
    let mut pos = 0;
    // Handshake bytes in the complete records seen so far.
    let mut have = 0;
    let mut msg_len = None;
    for _ in 0..MAX_RECORDS {
        // Reject non-TLS on the first bytes, before the header is complete.
        let header = buf.get(pos..).unwrap_or_default();
        let mut fields = header.iter().copied();
        if fields.next().is_some_and(|t| t != CONTENT_HANDSHAKE) {
            return Err(NotTls::NotHandshakeRecord.into());
        }
        if fields.next().is_some_and(|major| major != 3) {
            return Err(NotTls::BadVersion.into());
        }
        if fields.next().is_some_and(|minor| minor > 4) {
            return Err(NotTls::BadVersion.into());
        }
        let payload = pos + RECORD_HEADER_LEN;
        if payload > max_len {
            return Err(NotTls::TooLarge.into());
        }
        let (Some(hi), Some(lo)) = (fields.next(), fields.next()) else {
            return Ok(None);
        };
        // Zero-length handshake fragments are forbidden (RFC 5246 6.2.1, RFC 8446 5.1).
        let rec_len = usize::from(u16::from_be_bytes([hi, lo]));
        if rec_len == 0 || rec_len > MAX_RECORD_LEN {
            return Err(NotTls::BadLength.into());
        }
        if pos == 0 {
            // Check the handshake header early too, when the first record holds it.
            let first = buf.get(payload..).unwrap_or_default().iter().take(rec_len);
            let mut hs = first.copied();
            if hs.next().is_some_and(|t| t != HANDSHAKE_CLIENT_HELLO) {
                return Err(NotTls::NotClientHello.into());
            }
            if let (Some(a), Some(b), Some(c)) = (hs.next(), hs.next(), hs.next())
                && usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c) > max_len
            {
                return Err(NotTls::TooLarge.into());
            }
        }
        let end = payload + rec_len;
        if end > max_len {
            return Err(NotTls::TooLarge.into());
        }
        if end > buf.len() {
            return Ok(None);
        }
        have += rec_len;
        pos = end;

        if msg_len.is_none() && have >= HANDSHAKE_HEADER_LEN {
            let mut r = Reader::new(buf, HANDSHAKE_HEADER_LEN);
            let (typ, len) = r.u8().zip(r.u24()).ok_or(Refusal::Malformed("header"))?;
            if typ != HANDSHAKE_CLIENT_HELLO {
                return Err(NotTls::NotClientHello.into());
            }
            if len > max_len {
                return Err(NotTls::TooLarge.into());
            }
            msg_len = Some(len);
        }
        if let Some(len) = msg_len {
            let total = HANDSHAKE_HEADER_LEN + len;
            if have > total {
                // Nothing may follow the ClientHello in the client's first flight.
                return Err(Refusal::Malformed("data after ClientHello in its record"));
            }
            if have == total {
                return Ok(Some((pos, len)));
            }
        }
    }
    Err(NotTls::TooManyRecords.into())
}

type Offered = ([u8; 32], Option<String>, Vec<Vec<u8>>);

/// Parses a framed ClientHello whose body is `msg_len` bytes long.
fn parse(buf: &[u8], msg_len: usize) -> Result<Offered, Refusal> {
    use Refusal::Malformed as M;
    let mut r = Reader::new(buf, HANDSHAKE_HEADER_LEN + msg_len);
    r.skip(HANDSHAKE_HEADER_LEN).ok_or(M("header"))?;
    let version = r.u16().ok_or(M("version"))?;
    if version >> 8 != 3 {
        return Err(M("client version"));
    }
    let mut random = [0; 32];
    let mut at = 0;
    for chunk in r.take(32).ok_or(M("random"))?.chunks() {
        random[at..at + chunk.len()].copy_from_slice(chunk);
        at += chunk.len();
    }
    let session_id = usize::from(r.u8().ok_or(M("session id"))?);
    if session_id > 32 {
        return Err(M("session id length"));
    }
    r.skip(session_id).ok_or(M("session id"))?;
    let suites = usize::from(r.u16().ok_or(M("cipher suites"))?);
    if suites < 2 || suites % 2 != 0 {
        return Err(M("cipher suites length"));
    }
    r.skip(suites).ok_or(M("cipher suites"))?;
    let compression = usize::from(r.u8().ok_or(M("compression methods"))?);
    if compression < 1 {
        return Err(M("compression methods length"));
    }
    r.skip(compression).ok_or(M("compression methods"))?;

    let (mut sni, mut alpn) = (None, None);
    if r.is_empty() {
        // SSLv3-style hello without extensions.
        return Ok((random, None, Vec::new()));
    }
    let ext_len = usize::from(r.u16().ok_or(M("extensions"))?);
    if ext_len != r.left {
        return Err(M("extensions length"));
    }
    while !r.is_empty() {
        let typ = r.u16().ok_or(M("extension type"))?;
        let len = usize::from(r.u16().ok_or(M("extension length"))?);
        let data = r.take(len).ok_or(M("extension length"))?;
        match typ {
            EXT_SERVER_NAME if sni.is_some() => return Err(M("duplicate server_name")),
            EXT_SERVER_NAME => sni = Some(server_name(data)?),
            EXT_ALPN if alpn.is_some() => return Err(M("duplicate ALPN")),
            EXT_ALPN => alpn = Some(protocols(data)?),
            _ => {}
        }
    }
    Ok((random, sni, alpn.unwrap_or_default()))
}

/// RFC 6066 3: a server_name_list holding exactly one host_name.
fn server_name(mut ext: Reader<'_>) -> Result<String, Refusal> {
    use Refusal::Malformed as M;
    let list_len = usize::from(ext.u16().ok_or(M("server_name list"))?);
    if list_len != ext.left {
        return Err(M("server_name list length"));
    }
    if ext.u8().ok_or(M("server_name list"))? != 0 {
        return Err(M("server_name type is not host_name"));
    }
    let len = usize::from(ext.u16().ok_or(M("host_name"))?);
    let name = ext.take(len).ok_or(M("host_name length"))?;
    if len == 0 {
        return Err(M("empty host_name"));
    }
    if !ext.is_empty() {
        return Err(M("more than one server_name"));
    }
    let mut host = Vec::with_capacity(len);
    for chunk in name.chunks() {
        // Printable ASCII without space: what a DNS name (or Istio key) can hold.
        if !chunk.iter().all(u8::is_ascii_graphic) {
            return Err(M("host_name is not printable ASCII"));
        }
        host.extend_from_slice(chunk);
    }
    host.make_ascii_lowercase();
    String::from_utf8(host).map_err(|_| M("host_name is not printable ASCII"))
}

/// RFC 7301 3.1: a non-empty list of non-empty protocol names, kept as bytes.
fn protocols(mut ext: Reader<'_>) -> Result<Vec<Vec<u8>>, Refusal> {
    use Refusal::Malformed as M;
    let list_len = usize::from(ext.u16().ok_or(M("ALPN list"))?);
    if list_len != ext.left || list_len == 0 {
        return Err(M("ALPN list length"));
    }
    let mut out = Vec::new();
    while !ext.is_empty() {
        let len = usize::from(ext.u8().ok_or(M("ALPN name"))?);
        let name = ext.take(len).ok_or(M("ALPN name length"))?;
        if len == 0 {
            return Err(M("empty ALPN name"));
        }
        let mut bytes = Vec::with_capacity(len);
        name.chunks().for_each(|c| bytes.extend_from_slice(c));
        out.push(bytes);
    }
    Ok(out)
}

/// A bounded cursor over the handshake bytes of consecutive records in `buf`,
/// stepping over record headers. `frame` has validated those headers; every
/// access is still checked, so a bad offset gives `None`, never a panic.
#[derive(Clone, Copy)]
struct Reader<'a> {
    buf: &'a [u8],
    /// Next byte to read in `buf`.
    pos: usize,
    /// Bytes left in the current record payload.
    in_record: usize,
    /// Bytes left to this reader.
    left: usize,
}

impl<'a> Reader<'a> {
    /// A reader of `len` handshake bytes starting with the first record.
    fn new(buf: &'a [u8], len: usize) -> Self {
        Reader {
            buf,
            pos: 0,
            in_record: 0,
            left: len,
        }
    }

    fn is_empty(&self) -> bool {
        self.left == 0
    }

    /// The next contiguous run of at most `max` bytes.
    fn chunk(&mut self, max: usize) -> Option<&'a [u8]> {
        if self.left == 0 {
            return None;
        }
        while self.in_record == 0 {
            let header = self
                .buf
                .get(self.pos..self.pos.checked_add(RECORD_HEADER_LEN)?)?;
            let &[_, _, _, hi, lo] = header else {
                return None;
            };
            self.in_record = usize::from(u16::from_be_bytes([hi, lo]));
            self.pos += RECORD_HEADER_LEN;
        }
        let n = max.min(self.in_record).min(self.left);
        let out = self.buf.get(self.pos..self.pos.checked_add(n)?)?;
        self.advance(n);
        Some(out)
    }

    /// Moves past `n` bytes of the current record (`n` at most `in_record` and `left`).
    fn advance(&mut self, n: usize) {
        self.pos += n;
        self.in_record -= n;
        self.left -= n;
    }

    fn skip(&mut self, mut n: usize) -> Option<()> {
        if n > self.left {
            return None;
        }
        // Within the current record, as nearly always: no walk across records.
        if n <= self.in_record && self.pos + n <= self.buf.len() {
            self.advance(n);
            return Some(());
        }
        while n > 0 {
            n -= self.chunk(n)?.len();
        }
        Some(())
    }

    /// Splits off the next `n` bytes as their own reader.
    fn take(&mut self, n: usize) -> Option<Reader<'a>> {
        let mut sub = *self;
        sub.left = n;
        self.skip(n)?;
        Some(sub)
    }

    fn chunks(mut self) -> impl Iterator<Item = &'a [u8]> {
        std::iter::from_fn(move || self.chunk(usize::MAX))
    }

    fn u8(&mut self) -> Option<u8> {
        self.chunk(1)?.first().copied()
    }

    fn u16(&mut self) -> Option<u16> {
        // Both bytes in the current record, as nearly always: no walk across records.
        if self.in_record >= 2 && self.left >= 2 {
            let &[hi, lo] = self.buf.get(self.pos..self.pos + 2)? else {
                return None;
            };
            self.advance(2);
            return Some(u16::from_be_bytes([hi, lo]));
        }
        Some(u16::from_be_bytes([self.u8()?, self.u8()?]))
    }

    fn u24(&mut self) -> Option<usize> {
        let [a, b, c] = [self.u8()?, self.u8()?, self.u8()?].map(usize::from);
        Some(a << 16 | b << 8 | c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16be(n: usize) -> [u8; 2] {
        u16::try_from(n).unwrap().to_be_bytes()
    }

    fn ext(typ: u16, data: &[u8]) -> Vec<u8> {
        [&typ.to_be_bytes()[..], &u16be(data.len()), data].concat()
    }

    fn sni_ext(name_type: u8, name: &[u8]) -> Vec<u8> {
        let entry = [&[name_type][..], &u16be(name.len()), name].concat();
        ext(EXT_SERVER_NAME, &[&u16be(entry.len())[..], &entry].concat())
    }

    fn alpn_ext(names: &[&[u8]]) -> Vec<u8> {
        let list: Vec<u8> = names
            .iter()
            .flat_map(|n| [&[n.len() as u8][..], n].concat())
            .collect();
        ext(EXT_ALPN, &[&u16be(list.len())[..], &list].concat())
    }

    /// A one-record ClientHello around `exts` (`None`: no extension block).
    fn hello_with(session_id: u8, suites: &[u8], comp: &[u8], exts: Option<&[u8]>) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend(RANDOM);
        body.push(session_id);
        body.extend(vec![0; usize::from(session_id)]);
        body.extend(u16be(suites.len()));
        body.extend(suites);
        body.push(comp.len() as u8);
        body.extend(comp);
        if let Some(exts) = exts {
            body.extend(u16be(exts.len()));
            body.extend(exts);
        }
        let len = u32::try_from(body.len()).unwrap().to_be_bytes();
        let msg = [&[HANDSHAKE_CLIENT_HELLO, len[1], len[2], len[3]][..], &body].concat();
        [&[CONTENT_HANDSHAKE, 3, 1][..], &u16be(msg.len()), &msg].concat()
    }

    /// The client random of the hellos built here: distinct bytes, so an offset error shows.
    const RANDOM: [u8; 32] = {
        let mut r = [0; 32];
        let mut i = 0;
        while i < 32 {
            r[i] = 0xa0 + i as u8;
            i += 1;
        }
        r
    };

    fn hello(exts: &[Vec<u8>]) -> Vec<u8> {
        hello_with(0, &[0x13, 0x01], &[0], Some(&exts.concat()))
    }

    fn malformed(buf: &[u8]) -> &'static str {
        match detect(buf, 1 << 16) {
            Detect::Malformed(why) => why,
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn sni_and_alpn_found_and_lowercased() {
        let h = hello(&[
            sni_ext(0, b"Outbound_.80_._.A.Local"),
            alpn_ext(&[b"istio", b"h2"]),
        ]);
        let want = ClientHello {
            sni: Some("outbound_.80_._.a.local".into()),
            alpn: vec![b"istio".to_vec(), b"h2".to_vec()],
            random: RANDOM,
            hello_len: h.len(),
        };
        for n in 0..h.len() {
            assert_eq!(detect(&h[..n], 1 << 16), Detect::NeedMore, "prefix {n}");
        }
        let mut longer = h.clone();
        longer.extend([0x17, 3, 3, 0, 1, 0xff]);
        assert_eq!(detect(&h, 1 << 16), Detect::Found(want.clone()));
        assert_eq!(detect(&longer, 1 << 16), Detect::Found(want));
    }

    #[test]
    fn hello_without_extensions_or_sni() {
        let bare = hello_with(0, &[0, 0x2f], &[0], None);
        let Detect::Found(h) = detect(&bare, 1 << 16) else {
            panic!("not found")
        };
        assert_eq!((h.sni, h.alpn.len(), h.hello_len), (None, 0, bare.len()));
        assert_eq!(h.random, RANDOM);
        let Detect::Found(h) = detect(&hello(&[alpn_ext(&[b"istio"])]), 1 << 16) else {
            panic!("not found")
        };
        assert_eq!((h.sni, h.alpn), (None, vec![b"istio".to_vec()]));
    }

    #[test]
    fn handshake_header_split_over_one_byte_records() {
        let h = hello(&[sni_ext(0, b"a.local")]);
        let mut split = Vec::new();
        for &b in &h[RECORD_HEADER_LEN..] {
            split.extend([CONTENT_HANDSHAKE, 3, 3, 0, 1, b]);
        }
        let Detect::Found(found) = detect(&split, 1 << 16) else {
            panic!("not found")
        };
        assert_eq!(found.sni.as_deref(), Some("a.local"));
        // The random spans 32 one-byte records.
        assert_eq!(found.random, RANDOM);
        assert_eq!(found.hello_len, split.len());
    }

    #[test]
    fn nested_lengths_are_validated() {
        let sni = sni_ext(0, b"a.local");
        assert_eq!(
            malformed(&hello(&[sni.clone(), sni])),
            "duplicate server_name"
        );
        let alpn = alpn_ext(&[b"istio"]);
        assert_eq!(malformed(&hello(&[alpn.clone(), alpn])), "duplicate ALPN");
        assert!(malformed(&hello(&[sni_ext(0, b"a\0b")])).contains("printable"));
        assert!(malformed(&hello(&[sni_ext(0, b"a b")])).contains("printable"));
        assert!(malformed(&hello(&[sni_ext(1, b"a")])).contains("host_name"));
        assert_eq!(malformed(&hello(&[sni_ext(0, b"")])), "empty host_name");
        assert_eq!(
            malformed(&hello(&[ext(EXT_ALPN, &[0, 0])])),
            "ALPN list length"
        );
        assert_eq!(malformed(&hello(&[alpn_ext(&[b""])])), "empty ALPN name");
        let exts = Some(&[][..]);
        assert_eq!(
            malformed(&hello_with(33, &[0, 1], &[0], exts)),
            "session id length"
        );
        assert_eq!(
            malformed(&hello_with(0, &[0, 1, 2], &[0], exts)),
            "cipher suites length"
        );
        assert_eq!(
            malformed(&hello_with(0, &[], &[0], exts)),
            "cipher suites length"
        );
        assert_eq!(
            malformed(&hello_with(0, &[0, 1], &[], exts)),
            "compression methods length"
        );
    }

    #[test]
    fn alpn_names_are_opaque_bytes() {
        // RFC 8701 GREASE and arbitrary non-UTF-8 names are valid ALPN protocol names.
        let h = hello(&[alpn_ext(&[&[0xda, 0xda], b"istio", b"\xff\xfe"])]);
        let Detect::Found(found) = detect(&h, 1 << 16) else {
            panic!("not found")
        };
        assert_eq!(found.alpn, [&[0xda, 0xda][..], b"istio", b"\xff\xfe"]);
    }

    #[test]
    fn extension_block_must_be_consumed_exactly() {
        let mut h = hello(&[sni_ext(0, b"a.local")]);
        // Inner server_name list one byte longer than its extension.
        let at = h.len() - b"a.local".len() - 5;
        h[at] += 1;
        assert_eq!(malformed(&h), "server_name list length");
        // Extension block length one short of the message.
        let mut h = hello(&[ext(99, b"xy")]);
        let at = h.len() - 7;
        h[at] -= 1;
        assert_eq!(malformed(&h), "extensions length");
        // A further handshake message in the hello's record.
        let mut h = hello(&[]);
        h.push(0);
        h[4] += 1;
        assert!(malformed(&h).contains("after ClientHello"));
    }

    #[test]
    fn rejects_non_tls_on_first_bytes() {
        let cases: [(&[u8], NotTls); 7] = [
            (b"G", NotTls::NotHandshakeRecord),
            (&[0x80, 0x2e, 0x01], NotTls::NotHandshakeRecord),
            (&[0x16, 0x02], NotTls::BadVersion),
            (&[0x16, 0x03, 0x05], NotTls::BadVersion),
            (&[0x16, 0x03, 0x01, 0x00, 0x00], NotTls::BadLength),
            (&[0x16, 0x03, 0x01, 0x48, 0x01], NotTls::BadLength),
            (
                &[0x16, 0x03, 0x01, 0x00, 0x05, 0x02],
                NotTls::NotClientHello,
            ),
        ];
        for (buf, want) in cases {
            assert_eq!(detect(buf, 1 << 16), Detect::NotTls(want), "{buf:?}");
        }
        assert_eq!(detect(&[], 1 << 16), Detect::NeedMore);
    }

    #[test]
    fn caps_total_and_handshake_length() {
        let h = hello(&[sni_ext(0, b"a.local")]);
        assert!(matches!(detect(&h, h.len()), Detect::Found(_)));
        assert_eq!(detect(&h, h.len() - 1), Detect::NotTls(NotTls::TooLarge));
        assert_eq!(detect(&h[..3], 4), Detect::NotTls(NotTls::TooLarge));
        // A 1-byte first record announcing a 16 MiB message.
        let big = [0x16, 3, 1, 0, 4, 1, 0xff, 0xff, 0xff];
        let mut split = Vec::new();
        for b in &big[5..] {
            split.extend([0x16, 3, 1, 0, 1, *b]);
        }
        assert_eq!(detect(&split, 1 << 16), Detect::NotTls(NotTls::TooLarge));
    }
}
