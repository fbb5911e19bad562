//! SPDY/3.1 frames (draft-mbelshe-httpbis-spdy-00 and the 3.1 changes): the 8-byte frame
//! header, the control frames the streaming protocols use, and header blocks compressed with
//! zlib and SPDY/3's dictionary (one compression context per direction per connection).

use std::io;
use std::sync::OnceLock;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::{AsyncRead, AsyncReadExt as _};

/// The protocol version in every control frame.
pub const VERSION: u16 = 3;
/// The last frame a sender sends on a stream.
pub const FLAG_FIN: u8 = 0x01;
/// Largest frame payload accepted (the length field has 24 bits).
const MAX_PAYLOAD: usize = 1 << 24;
/// Largest header block accepted after decompression.
const MAX_HEADERS: usize = 1 << 20;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

/// Header names and values (names lowercase, as SPDY requires).
pub type Headers = Vec<(String, String)>;

/// One SPDY frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Opens a stream.
    SynStream {
        /// Stream id (odd for the client).
        id: u32,
        /// The stream's headers.
        headers: Headers,
        /// The sender sends nothing on it.
        fin: bool,
    },
    /// Accepts a stream.
    SynReply {
        /// Stream id.
        id: u32,
        /// Reply headers.
        headers: Headers,
        /// The sender sends nothing on it.
        fin: bool,
    },
    /// Aborts a stream.
    RstStream {
        /// Stream id.
        id: u32,
        /// Status code (5 = cancel).
        status: u32,
    },
    /// Connection settings (ignored here: no flow-control limits are enforced).
    Settings,
    /// A ping; the receiver echoes it.
    Ping(u32),
    /// The sender is closing the connection.
    GoAway {
        /// Last stream id it handled.
        last: u32,
    },
    /// More headers for a stream.
    Headers {
        /// Stream id.
        id: u32,
    },
    /// Flow-control credit for a stream (0 = the whole connection).
    WindowUpdate {
        /// Stream id.
        id: u32,
        /// Bytes added to the window.
        delta: u32,
    },
    /// Data on a stream.
    Data {
        /// Stream id.
        id: u32,
        /// The sender's last frame on the stream.
        fin: bool,
        /// Payload.
        data: Vec<u8>,
    },
    /// A control frame of another type.
    Unknown(u16),
}

/// SPDY/3's zlib dictionary for header blocks (section 2.6.10.1 of the draft): length-prefixed
/// common header names and values, then common text.
pub fn dictionary() -> &'static [u8] {
    static DICTIONARY: OnceLock<Vec<u8>> = OnceLock::new();
    DICTIONARY.get_or_init(|| {
        const WORDS: [&str; 65] = [
            "options",
            "head",
            "post",
            "put",
            "delete",
            "trace",
            "accept",
            "accept-charset",
            "accept-encoding",
            "accept-language",
            "accept-ranges",
            "age",
            "allow",
            "authorization",
            "cache-control",
            "connection",
            "content-base",
            "content-encoding",
            "content-language",
            "content-length",
            "content-location",
            "content-md5",
            "content-range",
            "content-type",
            "date",
            "etag",
            "expect",
            "expires",
            "from",
            "host",
            "if-match",
            "if-modified-since",
            "if-none-match",
            "if-range",
            "if-unmodified-since",
            "last-modified",
            "location",
            "max-forwards",
            "pragma",
            "proxy-authenticate",
            "proxy-authorization",
            "range",
            "referer",
            "retry-after",
            "server",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "user-agent",
            "vary",
            "via",
            "warning",
            "www-authenticate",
            "method",
            "get",
            "status",
            "200 OK",
            "version",
            "HTTP/1.1",
            "url",
            "public",
            "set-cookie",
            "keep-alive",
            "origin",
        ];
        const TEXT: &str = "100101201202205206300302303304305306307402405406407408409410411412\
            413414415416417502504505203 Non-Authoritative Information204 No Content301 Moved \
            Permanently400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal \
            Server Error501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul \
            Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,\
            text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,\
            text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8\
            charset=iso-8859-1,utf-,*,enq=0.";
        let mut d = Vec::with_capacity(1423);
        for word in WORDS {
            d.extend_from_slice(&(word.len() as u32).to_be_bytes());
            d.extend_from_slice(word.as_bytes());
        }
        d.extend_from_slice(TEXT.as_bytes());
        d
    })
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Encodes frames for one direction of a connection (owns its header compression context).
pub struct Encoder {
    deflate: Compress,
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Encoder {
    /// A fresh encoder.
    pub fn new() -> Encoder {
        let mut deflate = Compress::new(Compression::default(), true);
        // A fresh stream accepts a dictionary; this cannot fail.
        let _ = deflate.set_dictionary(dictionary());
        Encoder { deflate }
    }

    fn header_block(&mut self, headers: &Headers) -> io::Result<Vec<u8>> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (name, value) in headers {
            for s in [name, value] {
                raw.extend_from_slice(&(s.len() as u32).to_be_bytes());
                raw.extend_from_slice(s.as_bytes());
            }
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut pos = 0;
        loop {
            out.reserve(raw.len() + 64);
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(&raw[pos..], &mut out, FlushCompress::Sync)
                .map_err(io::Error::other)?;
            pos += (self.deflate.total_in() - before) as usize;
            if pos == raw.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }

    /// The bytes of `frame`.
    pub fn encode(&mut self, frame: &Frame) -> io::Result<Vec<u8>> {
        let control = |kind: u16, flags: u8, payload: Vec<u8>| {
            let mut out = Vec::with_capacity(payload.len() + 8);
            out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
            out.extend_from_slice(&kind.to_be_bytes());
            out.extend_from_slice(&((u32::from(flags) << 24) | payload.len() as u32).to_be_bytes());
            out.extend_from_slice(&payload);
            out
        };
        let fin = |f: bool| if f { FLAG_FIN } else { 0 };
        Ok(match frame {
            Frame::SynStream {
                id,
                headers,
                fin: f,
            } => {
                let mut p = Vec::new();
                p.extend_from_slice(&id.to_be_bytes());
                p.extend_from_slice(&0u32.to_be_bytes());
                p.extend_from_slice(&[0, 0]);
                p.extend(self.header_block(headers)?);
                control(SYN_STREAM, fin(*f), p)
            }
            Frame::SynReply {
                id,
                headers,
                fin: f,
            } => {
                let mut p = id.to_be_bytes().to_vec();
                p.extend(self.header_block(headers)?);
                control(SYN_REPLY, fin(*f), p)
            }
            Frame::RstStream { id, status } => {
                let mut p = id.to_be_bytes().to_vec();
                p.extend_from_slice(&status.to_be_bytes());
                control(RST_STREAM, 0, p)
            }
            Frame::Settings => control(SETTINGS, 0, 0u32.to_be_bytes().to_vec()),
            Frame::Ping(id) => control(PING, 0, id.to_be_bytes().to_vec()),
            Frame::GoAway { last } => {
                let mut p = last.to_be_bytes().to_vec();
                p.extend_from_slice(&0u32.to_be_bytes());
                control(GOAWAY, 0, p)
            }
            Frame::WindowUpdate { id, delta } => {
                let mut p = id.to_be_bytes().to_vec();
                p.extend_from_slice(&delta.to_be_bytes());
                control(WINDOW_UPDATE, 0, p)
            }
            Frame::Data { id, fin: f, data } => {
                if data.len() >= MAX_PAYLOAD {
                    return Err(invalid("data frame too large"));
                }
                let mut out = Vec::with_capacity(data.len() + 8);
                out.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
                out.extend_from_slice(
                    &((u32::from(fin(*f)) << 24) | data.len() as u32).to_be_bytes(),
                );
                out.extend_from_slice(data);
                out
            }
            Frame::Headers { .. } | Frame::Unknown(_) => {
                return Err(invalid("this frame type is never sent"));
            }
        })
    }
}

/// Decodes frames of one direction of a connection (owns its header decompression context).
pub struct Decoder {
    inflate: Decompress,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A fresh decoder.
    pub fn new() -> Decoder {
        Decoder {
            inflate: Decompress::new(true),
        }
    }

    fn header_block(&mut self, block: &[u8]) -> io::Result<Headers> {
        let mut raw = Vec::with_capacity(block.len() * 4 + 256);
        let mut pos = 0;
        loop {
            if raw.capacity() - raw.len() < 1024 {
                raw.reserve(4096);
            }
            let (in_before, out_before) = (self.inflate.total_in(), self.inflate.total_out());
            let result =
                self.inflate
                    .decompress_vec(&block[pos..], &mut raw, FlushDecompress::Sync);
            pos += (self.inflate.total_in() - in_before) as usize;
            match result {
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(dictionary())
                        .map_err(|e| invalid(format!("header dictionary: {e}")))?;
                    continue;
                }
                Err(e) => return Err(invalid(format!("header block: {e}"))),
            }
            if raw.len() > MAX_HEADERS {
                return Err(invalid("header block too large"));
            }
            let progressed =
                self.inflate.total_in() != in_before || self.inflate.total_out() != out_before;
            if (pos == block.len() && raw.len() < raw.capacity()) || !progressed {
                break;
            }
        }
        parse_headers(&raw)
    }

    /// Decodes one frame from its 8-byte header and payload.
    pub fn decode(&mut self, head: [u8; 8], payload: &[u8]) -> io::Result<Frame> {
        let word = |b: &[u8], at: usize| -> io::Result<u32> {
            b.get(at..at + 4)
                .map(|w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
                .ok_or_else(|| invalid("frame payload too short"))
        };
        let flags = head[4];
        let fin = flags & FLAG_FIN != 0;
        if head[0] & 0x80 == 0 {
            return Ok(Frame::Data {
                id: word(&head, 0)? & 0x7fff_ffff,
                fin,
                data: payload.to_vec(),
            });
        }
        let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
        if version != VERSION {
            return Err(invalid(format!("SPDY version {version} is not 3")));
        }
        let kind = u16::from_be_bytes([head[2], head[3]]);
        let id = || word(payload, 0).map(|w| w & 0x7fff_ffff);
        Ok(match kind {
            SYN_STREAM => Frame::SynStream {
                id: id()?,
                headers: self.header_block(
                    payload
                        .get(10..)
                        .ok_or_else(|| invalid("short SYN_STREAM"))?,
                )?,
                fin,
            },
            SYN_REPLY => Frame::SynReply {
                id: id()?,
                headers: self.header_block(&payload[4.min(payload.len())..])?,
                fin,
            },
            RST_STREAM => Frame::RstStream {
                id: id()?,
                status: word(payload, 4)?,
            },
            SETTINGS => Frame::Settings,
            PING => Frame::Ping(word(payload, 0)?),
            GOAWAY => Frame::GoAway { last: id()? },
            HEADERS => {
                // Keep the decompression context in step even though the headers are unused.
                self.header_block(&payload[4.min(payload.len())..])?;
                Frame::Headers { id: id()? }
            }
            WINDOW_UPDATE => Frame::WindowUpdate {
                id: id()?,
                delta: word(payload, 4)? & 0x7fff_ffff,
            },
            other => Frame::Unknown(other),
        })
    }
}

fn parse_headers(raw: &[u8]) -> io::Result<Headers> {
    let mut at = 0;
    let mut next = |len: usize| -> io::Result<&[u8]> {
        let s = raw
            .get(at..at + len)
            .ok_or_else(|| invalid("truncated header block"))?;
        at += len;
        Ok(s)
    };
    let number = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let count = number(next(4)?);
    let mut headers = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let len = number(next(4)?);
        let name = String::from_utf8_lossy(next(len)?).to_ascii_lowercase();
        let len = number(next(4)?);
        let value = String::from_utf8_lossy(next(len)?).into_owned();
        // Several values of one name are joined by NUL.
        for v in value.split('\0') {
            headers.push((name.clone(), v.to_owned()));
        }
    }
    Ok(headers)
}

/// The first value of header `name` (lowercase).
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Reads the next frame; None at a clean end of the connection.
pub async fn read<R: AsyncRead + Unpin>(
    r: &mut R,
    decoder: &mut Decoder,
) -> io::Result<Option<Frame>> {
    let mut head = [0u8; 8];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = (u32::from_be_bytes([0, head[5], head[6], head[7]])) as usize;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    decoder.decode(head, &payload).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_spdy3s() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        // The dictionary id every SPDY/3 header block's zlib header carries.
        let mut compress = Compress::new(Compression::default(), true);
        assert_eq!(compress.set_dictionary(d).unwrap(), 0xe3c6_a7c2);
    }

    #[tokio::test]
    async fn frames_round_trip_with_one_compression_context_per_direction() {
        let frames = vec![
            Frame::SynStream {
                id: 1,
                headers: vec![("streamtype".into(), "error".into())],
                fin: false,
            },
            Frame::SynStream {
                id: 3,
                headers: vec![
                    ("streamtype".into(), "data".into()),
                    ("port".into(), "8080".into()),
                    ("requestid".into(), "0".into()),
                ],
                fin: true,
            },
            Frame::SynReply {
                id: 3,
                headers: vec![],
                fin: false,
            },
            Frame::Data {
                id: 3,
                fin: true,
                data: b"hello".to_vec(),
            },
            Frame::Ping(7),
            Frame::WindowUpdate { id: 0, delta: 100 },
            Frame::RstStream { id: 5, status: 5 },
            Frame::GoAway { last: 3 },
        ];
        let mut encoder = Encoder::new();
        let mut bytes = Vec::new();
        for f in &frames {
            bytes.extend(encoder.encode(f).unwrap());
        }
        let mut decoder = Decoder::new();
        let mut reader = bytes.as_slice();
        let mut decoded = Vec::new();
        while let Some(f) = read(&mut reader, &mut decoder).await.unwrap() {
            decoded.push(f);
        }
        assert_eq!(decoded, frames);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut decoder = Decoder::new();
        let head = [0x80, 3, 0, 1, 0, 0, 0, 12];
        assert!(decoder.decode(head, &[0; 12]).is_err());
        assert!(
            decoder
                .decode([0x80, 2, 0, 6, 0, 0, 0, 4], &[0; 4])
                .is_err()
        );
        assert!(
            decoder
                .decode([0x80, 3, 0, 3, 0, 0, 0, 2], &[0; 2])
                .is_err()
        );
    }
}
